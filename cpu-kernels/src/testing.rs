//! What the kernels' tests and benches share: seeded tensors that do not draw from burn's
//! generator (which the tests of one binary share), and how far two tensors are apart.

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};

/// A tensor of `shape` with values in -1..1 from `seed`.
pub fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Largest relative L2 difference of two tensors.
#[cfg(test)]
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
