//! The foundation suite: tensors, CPU ops, autograd. One binary, a module per capability.
#![allow(clippy::needless_range_loop, clippy::type_complexity)]

mod autograd;
mod common;
mod errors;
mod forward;
mod gradcheck;
mod training;
