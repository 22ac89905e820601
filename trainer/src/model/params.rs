//! What every family's network answers about its parameters, walked the same way: drawing them
//! all at build time, the trainable ones one by one, and how many values are not finite.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// What [`for_each_trainable`] tells about a parameter.
#[derive(Debug, Clone, Copy)]
pub struct TrainableParam<'a> {
    /// burn's id (the key of gradients and optimizer state).
    pub id: ParamId,
    /// Its field name (`weight`, `bias`, `gamma`, `pos_embed`, ...).
    pub name: &'a str,
    /// Tensor rank.
    pub rank: usize,
    /// Number of values.
    pub elements: usize,
}

/// Draws every parameter's values now, in module order. burn draws a parameter lazily, when
/// it is first read: drawn at build time instead, a seed gives the same weights whatever reads
/// them first (a forward pass, an export, an import that overwrites only some).
pub fn draw_all(module: &impl Module) {
    struct Draw;
    impl ModuleVisitor for Draw {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Draw);
}

/// Calls `f` for every trainable parameter of `module` (every float parameter but batch norm's
/// running statistics, which timm keeps as buffers), in module order.
pub fn for_each_trainable(module: &impl Module, f: impl FnMut(TrainableParam<'_>)) {
    struct Walk<F> {
        path: Vec<String>,
        f: F,
    }
    impl<F: FnMut(TrainableParam<'_>)> ModuleVisitor for Walk<F> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let name = self.path.last().map_or("", String::as_str);
            if !matches!(name, "running_mean" | "running_var") {
                (self.f)(TrainableParam {
                    id: param.id,
                    name,
                    rank: D,
                    elements: param.lazy_shape().num_elements(),
                });
            }
        }
    }
    module.visit(&mut Walk {
        path: Vec::new(),
        f,
    });
}

/// timm's `sum(p.numel() for p in model.parameters())` of `module`.
pub fn trainable_count(module: &impl Module) -> usize {
    let mut total = 0;
    for_each_trainable(module, |p| total += p.elements);
    total
}

/// How many values of `module`'s float parameters (and statistics) are NaN or infinite:
/// counted on the device, one number read back.
pub fn non_finite_values(module: &impl Module) -> u64 {
    struct Count(Option<Tensor<1, burn::tensor::Int>>);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let bad = param
                .val()
                .is_finite()
                .bool_not()
                .int()
                .sum()
                .cast(burn::tensor::IntDType::I64);
            self.0 = Some(match self.0.take() {
                Some(total) => total + bad,
                None => bad,
            });
        }
    }
    let mut count = Count(None);
    module.visit(&mut count);
    count
        .0
        .map_or(0, |total| total.into_scalar::<i64>().max(0) as u64)
}
