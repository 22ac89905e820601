//! Our ops on burn's `Autodiff` backend, for what it does not differentiate again.
//!
//! Each op is a backend extension: a trait, its implementation on burn-flex, and one on
//! `Autodiff<B>` that records the op in the graph. The ops that only serve a backward pass
//! (the gradients themselves, batch norm's statistics, an optimizer step) are not
//! differentiated again (no second order), so on `Autodiff` they run on the inner backend: the
//! float tensors unwrapped, the result wrapped, outside the graph. [`on_inner!`] writes those
//! forwarding methods from their names and arguments, so that each signature is written in
//! the trait and the flex implementation only.

/// Inside `impl<B: Ext, C: CheckpointStrategy> Ext for Autodiff<B, C>`: methods that call
/// `B`'s method of the same name on the inner tensors and wrap its result.
///
/// `fn name(a, b; n: Norm);` forwards float tensors `a` and `b` (unwrapped) and then `n` (as
/// is), returning a float tensor.
macro_rules! on_inner {
    ($(fn $name:ident($($tensor:ident),+ $(; $($arg:ident: $ty:ty),+)?);)+) => {
        $(
            fn $name(
                $($tensor: ::burn::backend::tensor::FloatTensor<Self>,)+
                $($($arg: $ty),+)?
            ) -> ::burn::backend::tensor::FloatTensor<Self> {
                Self::from_inner(B::$name($(Self::inner($tensor),)+ $($($arg),+)?))
            }
        )+
    };
}

pub(crate) use on_inner;
