//! What the kernels' tests share: seeded tensors that do not draw from burn's generator, and
//! how far two tensors are apart.

use burn::tensor::{Device, Tensor, TensorData};

/// Largest relative L2 difference of two tensors.
pub(crate) fn relative<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f64 {
    let a = a
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("f64");
    let b = b
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("f64");
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

/// A tensor of `shape` with values in -1..1 from `seed` (not burn's generator, which
/// the tests of this binary share).
pub(crate) fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
