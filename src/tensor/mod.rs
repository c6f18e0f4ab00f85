//! `Tensor`: shared storage + layout + dtype + device + autograd node. Cloning a Tensor is
//! cheap (an Arc); views share storage. Every op is a method, defined in `ops/` beside
//! its backward rule.

mod create;
mod view;

use crate::autograd::{self, BackwardFn, Node};
use crate::backend::Storage;
use crate::{DType, Device, Error, Layout, Result, Shape, WithDType};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

pub(crate) struct TensorInner {
    id: usize,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    /// Set on leaves the user wants gradients for.
    requires_grad: AtomicBool,
    node: Option<Arc<Node>>,
    grad: Mutex<Option<Tensor>>,
    /// Run after backward accumulates this leaf's gradient, with the id each was given.
    grad_hooks: Mutex<Vec<(usize, GradHook)>>,
}

/// A function run after a backward pass has accumulated a leaf's gradient (PyTorch's
/// `register_post_accumulate_grad_hook`), given the leaf. Data-parallel training uses it to
/// start a bucket's all-reduce as soon as the bucket's last gradient is in, while backward
/// still runs for the layers before.
pub type GradHook = Arc<dyn Fn(&Tensor) -> Result<()> + Send + Sync>;

static NEXT_HOOK: AtomicUsize = AtomicUsize::new(1);

/// An n-dimensional array that records the ops applied to it for reverse-mode autograd.
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

impl Tensor {
    /// A leaf tensor owning `storage`, viewed by `layout`.
    pub(crate) fn from_storage(storage: Storage, layout: Layout) -> Tensor {
        Tensor::with_parts(Arc::new(RwLock::new(storage)), layout, None)
    }

    fn with_parts(storage: Arc<RwLock<Storage>>, layout: Layout, node: Option<Arc<Node>>) -> Tensor {
        let (dtype, device) = {
            let s = storage.read().unwrap_or_else(|p| p.into_inner());
            (s.dtype(), s.device())
        };
        Tensor(Arc::new(TensorInner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage,
            layout,
            dtype,
            device,
            requires_grad: AtomicBool::new(false),
            node,
            grad: Mutex::new(None),
            grad_hooks: Mutex::new(Vec::new()),
        }))
    }

    /// The result of an op. Records a node when gradients are on and an input needs one;
    /// otherwise the backward closure (and what it captured) is dropped at once.
    pub(crate) fn from_op<F>(
        storage: Storage,
        layout: Layout,
        name: &'static str,
        inputs: &[&Tensor],
        backward: F,
    ) -> Tensor
    where
        F: FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        Self::record(Arc::new(RwLock::new(storage)), layout, name, inputs, false, Box::new(move |g, _| backward(g)))
    }

    /// Like `from_op`, for backward rules that use the op's own output (exp, tanh, softmax...).
    pub(crate) fn from_op_out<F>(
        storage: Storage,
        layout: Layout,
        name: &'static str,
        inputs: &[&Tensor],
        backward: F,
    ) -> Tensor
    where
        F: FnOnce(&Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        let bw: BackwardFn = Box::new(move |g, out| match out {
            Some(out) => backward(g, out),
            None => Err(Error::Backward("internal: output not kept for an op that needs it".into())),
        });
        Self::record(Arc::new(RwLock::new(storage)), layout, name, inputs, true, bw)
    }

    /// A view of `self`'s storage with another layout (transpose, narrow, ...).
    pub(crate) fn view_op<F>(&self, layout: Layout, name: &'static str, backward: F) -> Tensor
    where
        F: FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        Self::record(self.0.storage.clone(), layout, name, &[self], false, Box::new(move |g, _| backward(g)))
    }

    fn record(
        storage: Arc<RwLock<Storage>>,
        layout: Layout,
        name: &'static str,
        inputs: &[&Tensor],
        keep_output: bool,
        backward: BackwardFn,
    ) -> Tensor {
        let track = autograd::is_grad_enabled() && inputs.iter().any(|t| t.requires_grad());
        if !track {
            return Tensor::with_parts(storage, layout, None);
        }
        // The node keeps a *detached* handle on the output (no node of its own), so the
        // output -> node -> output loop that would leak the graph never forms.
        let output = keep_output.then(|| Tensor::with_parts(storage.clone(), layout.clone(), None));
        let node = Node::new(name, inputs, output, backward);
        Tensor::with_parts(storage, layout, Some(Arc::new(node)))
    }

    // ----- accessors -----

    /// A process-unique id (differs between views of the same storage).
    pub fn id(&self) -> usize {
        self.0.id
    }
    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }
    pub fn rank(&self) -> usize {
        self.dims().len()
    }
    /// Size of dim `d` (negative counts from the end).
    pub fn dim(&self, d: isize) -> Result<usize> {
        Ok(self.dims()[self.shape().dim(d, "dim")?])
    }
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn storage_mut(&self) -> std::sync::RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|p| p.into_inner())
    }
    /// Whether the view covers its whole storage, densely, from element 0.
    pub(crate) fn is_whole_storage(&self) -> bool {
        self.is_contiguous() && self.layout().offset() == 0 && self.storage().len() == self.elem_count()
    }
    /// A weak handle on the storage: whether anything still holds this tensor's data.
    #[cfg(test)]
    pub(crate) fn storage_weak(&self) -> std::sync::Weak<RwLock<Storage>> {
        Arc::downgrade(&self.0.storage)
    }
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.0.node.as_ref()
    }
    /// Whether two tensors view the same storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ----- autograd -----

    /// Whether gradients flow to or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.node.is_some() || self.0.requires_grad.load(Ordering::Relaxed)
    }

    /// Marks a leaf as needing gradients (a parameter). Errors on non-float dtypes and on
    /// tensors that are the result of an op.
    pub fn set_requires_grad(&self, on: bool) -> Result<()> {
        if self.0.node.is_some() {
            return Err(Error::Backward("requires_grad can only be set on leaf tensors; use detach() first".into()));
        }
        if on && !self.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: "requires_grad",
                dtype: self.dtype(),
                msg: "only float tensors have gradients",
            });
        }
        self.0.requires_grad.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Builder form of [`set_requires_grad`](Self::set_requires_grad)`(true)`.
    pub fn requires_grad_(self) -> Result<Tensor> {
        self.set_requires_grad(true)?;
        Ok(self)
    }

    /// Whether this is a leaf (made by the user, not by an op that tracks gradients).
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }

    /// The name of the op that made this tensor, if it is tracked.
    pub fn grad_fn(&self) -> Option<&'static str> {
        self.0.node.as_ref().map(|n| n.name())
    }

    /// The gradient accumulated by `backward()` (leaves only).
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the accumulated gradient.
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Replaces the accumulated gradient (data-parallel training writes the all-reduced one).
    pub(crate) fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap_or_else(|p| p.into_inner()) = g;
    }

    /// Adds `g` to the leaf's gradient, then runs its hooks (outside the gradient's lock,
    /// so a hook may read `grad()`).
    pub(crate) fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        {
            let mut slot = self.0.grad.lock().unwrap_or_else(|p| p.into_inner());
            *slot = Some(match slot.take() {
                Some(prev) => prev.add(&g)?,
                None => g.contiguous()?,
            });
        }
        let hooks: Vec<GradHook> =
            self.0.grad_hooks.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, h)| h.clone()).collect();
        for hook in hooks {
            hook(self)?;
        }
        Ok(())
    }

    /// Registers `hook` to run each time a backward pass has accumulated this leaf's
    /// gradient (once per backward, after all of that pass's contributions are summed).
    /// Returns an id for [`Tensor::remove_grad_hook`]. Only leaves that require gradients
    /// receive gradients, so only they take hooks.
    pub fn register_post_accumulate_grad_hook(
        &self,
        hook: impl Fn(&Tensor) -> Result<()> + Send + Sync + 'static,
    ) -> Result<usize> {
        if !self.is_leaf() || !self.requires_grad() {
            return Err(Error::invalid(
                "register_post_accumulate_grad_hook",
                format!("only a leaf that requires grad accumulates gradients (shape {})", self.shape()),
            ));
        }
        let id = NEXT_HOOK.fetch_add(1, Ordering::Relaxed);
        self.0.grad_hooks.lock().unwrap_or_else(|p| p.into_inner()).push((id, Arc::new(hook)));
        Ok(id)
    }

    /// Removes the hook `id` registered on this tensor (no-op when it is not there).
    pub fn remove_grad_hook(&self, id: usize) {
        self.0.grad_hooks.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _)| *i != id);
    }

    /// Computes gradients of this scalar w.r.t. every leaf that requires them; they add up
    /// in each leaf's `grad()`. The graph is freed as it is walked.
    pub fn backward(&self) -> Result<()> {
        if self.elem_count() != 1 {
            return Err(Error::Backward(format!(
                "backward() needs a scalar, got shape {}; use backward_with(grad)",
                self.shape()
            )));
        }
        self.backward_with(&self.ones_like()?)
    }

    /// Backward with an explicit gradient for this (non-scalar) tensor.
    pub fn backward_with(&self, grad: &Tensor) -> Result<()> {
        if !self.requires_grad() {
            return Err(Error::Backward("this tensor does not require grad (no leaf in its graph does)".into()));
        }
        if grad.shape() != self.shape() || grad.dtype() != self.dtype() {
            return Err(Error::Backward(format!(
                "gradient of shape {} {:?} for a tensor of shape {} {:?}",
                grad.shape(),
                grad.dtype(),
                self.shape(),
                self.dtype()
            )));
        }
        autograd::backward(self, grad.detach())
    }

    /// The same data, cut from the graph.
    pub fn detach(&self) -> Tensor {
        Tensor::with_parts(self.0.storage.clone(), self.0.layout.clone(), None)
    }

    // ----- reading values -----

    /// All elements in row-major order, converted to `T`.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        match &*self.storage() {
            Storage::Cpu(s) => Ok(s.to_vec(self.layout())),
            Storage::Cuda(s) => Ok(s.to_cpu()?.to_vec(self.layout())),
        }
    }

    /// The only element of a one-element tensor.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::InvalidShape {
                op: "to_scalar",
                shape: self.shape().clone(),
                msg: "needs exactly one element".into(),
            });
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// Rows of a 2-D tensor.
    pub fn to_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>> {
        if self.rank() != 2 {
            return Err(Error::InvalidShape { op: "to_vec2", shape: self.shape().clone(), msg: "needs rank 2".into() });
        }
        let cols = self.dims()[1];
        Ok(self.to_vec::<T>()?.chunks(cols.max(1)).map(|c| c.to_vec()).collect())
    }

    // ----- in-place updates (optimizers) -----

    /// Copies `src` into this tensor's elements, in place. Refused while gradients are being
    /// recorded for this tensor (as in PyTorch: wrap optimizer updates in `no_grad`).
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if autograd::is_grad_enabled() && self.requires_grad() {
            return Err(Error::Backward(
                "in-place update of a tensor that requires grad; wrap it in kiln::no_grad".into(),
            ));
        }
        self.check_same("assign", src)?;
        if src.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op: "assign", lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        // Read the source first: it may share this tensor's storage.
        let src_c = if src.same_storage(self) { src.detach().copy()? } else { src.detach() };
        let src_storage = src_c.storage();
        let mut dst = self.0.storage.write().unwrap_or_else(|p| p.into_inner());
        dst.copy_into(self.layout(), &src_storage, src_c.layout())
    }

    /// `self -= other` in place (broadcasting `other`), for manual SGD steps.
    pub fn sub_(&self, other: &Tensor) -> Result<()> {
        let new = autograd::no_grad(|| self.sub(other))?;
        self.assign(&new)
    }

    /// A contiguous copy that owns new storage.
    pub fn copy(&self) -> Result<Tensor> {
        let s = self.storage().to_contiguous(self.layout())?;
        Ok(Tensor::from_op(s, Layout::contiguous(self.shape().clone()), "copy", &[self], |g| Ok(vec![Some(g.clone())])))
    }

    /// Errors unless `other` has this tensor's dtype and device.
    pub(crate) fn check_same(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: other.device() });
        }
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: other.dtype() });
        }
        Ok(())
    }

    pub(crate) fn check_float(&self, op: &'static str) -> Result<()> {
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType { op, dtype: self.dtype(), msg: "needs a float dtype" });
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{}, {:?}, {}", self.shape(), self.dtype(), self.device())?;
        if let Some(n) = self.grad_fn() {
            write!(f, ", grad_fn={n}")?;
        } else if self.requires_grad() {
            write!(f, ", requires_grad")?;
        }
        write!(f, "]")?;
        if self.elem_count() <= 16 {
            if let Ok(v) = self.to_vec::<f64>() {
                write!(f, " {v:?}")?;
            }
        }
        Ok(())
    }
}
