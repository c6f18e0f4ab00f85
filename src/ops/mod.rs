//! Every op as a `Tensor` method, grouped by family: the forward dispatches to the backend
//! (`Storage`), the backward rule sits beside it, written in tensor ops.

mod conv;
mod dropout;
mod elementwise;
mod index;
mod matmul;
pub(crate) mod norm;
mod pool;
mod reduce;
mod softmax;

pub use conv::Conv2dOptions;
