//! Whether ops record the graph: on by default, off inside `no_grad` (per thread, as in
//! PyTorch, so data-parallel workers do not disturb each other).

use std::cell::Cell;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record gradients now.
pub fn is_grad_enabled() -> bool {
    ENABLED.with(|e| e.get())
}

/// Turns gradient recording off on this thread until dropped (then restores it).
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    #[allow(clippy::new_without_default)]
    pub fn new() -> NoGradGuard {
        let prev = ENABLED.with(|e| e.replace(false));
        NoGradGuard { prev }
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        ENABLED.with(|e| e.set(self.prev));
    }
}

/// Runs `f` without recording gradients: `kiln::no_grad(|| w.sub_(&step))`.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = NoGradGuard::new();
    f()
}
