//! Same seed, same weights, on every device: as timm builds its model on the CPU and then moves
//! it (`model.to(device)`), a model is initialized from the seed by the CPU backend (flex) and
//! its parameters copied to the device. A run on `cube-cpu` or a GPU then starts from the
//! weights a CPU run starts from, so their losses can be compared step by step.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::device::DeviceKind;
use crate::model::family::ConfigError;
use crate::model::network::{Network, NetworkConfig};

/// `config`'s model on `device` (of `kind`), its weights drawn from `seed` on the CPU. The
/// device is seeded with `seed` too, for what draws from its generator later.
///
/// # Errors
/// [`ConfigError`] for a configuration that builds no ResNet.
pub fn init(
    config: &NetworkConfig,
    kind: DeviceKind,
    device: &Device,
    seed: u64,
) -> Result<Network, ConfigError> {
    device.seed(seed);
    if kind == DeviceKind::Flex {
        return config.init(device);
    }
    let host = Device::flex();
    host.seed(seed);
    let drawn = config.init(&host)?;
    Ok(copy_params(&drawn, config.init(device)?))
}

/// Copies every float parameter of `from` into `to` (same architecture), onto `to`'s devices
/// and in their default float type.
pub fn copy_params(from: &Network, to: Network) -> Network {
    struct Collect(Vec<TensorData>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().to_data());
        }
    }
    struct Replace(std::vec::IntoIter<TensorData>);
    impl ModuleMapper for Replace {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.0.next() {
                Some(data) => param.map(|t| {
                    let device = t.device();
                    let dtype = t.dtype();
                    let tracked = t.is_require_grad();
                    Tensor::<D>::from_data(data, &device)
                        .cast(dtype)
                        .set_require_grad(tracked)
                }),
                None => param,
            }
        }
    }
    let mut collect = Collect(Vec::new());
    from.visit(&mut collect);
    to.map(&mut Replace(collect.0.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::Family;
    use crate::model::resnet::{ResNet, ResNetConfig};

    #[test]
    fn a_copy_holds_the_same_values() {
        let config = ResNetConfig {
            depth: 18,
            num_classes: 3,
            width: 0.0625,
            small_stem: true,
            drop_path_rate: 0.0,
            zero_init_last: false,
            variant: Default::default(),
        };
        let device = Device::flex();
        let a = config.init(&device).map(Network::from).expect("config");
        let b = config.init(&device).map(Network::from).expect("config");
        let values = |m: &Network| {
            let m: &ResNet = m.resnet().expect("a ResNet");
            let mut all = Vec::new();
            for t in [
                m.layer1[0].conv1.weight.val(),
                m.layer4[1].conv2.weight.val(),
            ] {
                all.extend(t.into_data().try_to_vec::<f32>().expect("f32"));
            }
            all.extend(
                m.fc.weight
                    .val()
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32"),
            );
            all
        };
        assert_ne!(values(&a), values(&b), "two draws differ");
        let c = copy_params(&a, b);
        assert_eq!(values(&a), values(&c), "a copy holds the drawn weights");
    }
}
