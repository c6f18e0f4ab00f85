//! Reverse-mode autograd. Every op that tracks gradients gives its output a [`Node`]
//! holding its inputs and a backward closure written (beside the forward) in tensor ops.
//! `backward()` walks the nodes in reverse topological order, accumulates one gradient per
//! tensor, stores the gradients of leaves, and frees each node as it goes.

mod grad_mode;

pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};

use crate::{Error, Result, Tensor};
use std::collections::HashMap;
use std::sync::Mutex;

/// Gradients w.r.t. each input (None: no gradient flows there), given the output's gradient
/// and (for ops that asked for it) the detached output.
pub(crate) type BackwardFn = Box<dyn FnOnce(&Tensor, Option<&Tensor>) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

struct NodeState {
    inputs: Vec<Tensor>,
    output: Option<Tensor>,
    backward: BackwardFn,
}

/// The recorded op that produced a tensor.
pub struct Node {
    name: &'static str,
    state: Mutex<Option<NodeState>>,
}

impl Node {
    pub(crate) fn new(name: &'static str, inputs: Vec<Tensor>, output: Option<Tensor>, backward: BackwardFn) -> Node {
        Node { name, state: Mutex::new(Some(NodeState { inputs, output, backward })) }
    }
    /// The op's name, e.g. "matmul".
    pub fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Tensor> {
        self.lock().as_ref().map(|s| s.inputs.clone()).unwrap_or_default()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<NodeState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs backward from `root` with the seed gradient `seed` (ones for a scalar root).
///
/// Order: an op runs once every op that consumes its output has handed it a gradient, and
/// among those ready, the most recently created first (PyTorch's rule), so backward follows
/// the forward in reverse, layer by layer. A leaf is accumulated (and its hooks run) the
/// moment its last gradient arrives, not after the rest of the graph: data-parallel hooks
/// start all-reducing the last layers' gradients while backward works on the first layers.
pub(crate) fn backward(root: &Tensor, seed: Tensor) -> Result<()> {
    let _guard = NoGradGuard::new();
    // Every tensor reachable from the root that needs a gradient, and per tensor the number
    // of edges (op -> input) through which its gradient still has to come.
    let mut tensors: HashMap<usize, Tensor> = HashMap::from([(root.id(), root.clone())]);
    let mut pending: HashMap<usize, usize> = HashMap::new();
    let mut stack = vec![root.clone()];
    while let Some(t) = stack.pop() {
        for i in t.node().map(|n| n.inputs()).unwrap_or_default() {
            if i.requires_grad() {
                *pending.entry(i.id()).or_insert(0) += 1;
                if let std::collections::hash_map::Entry::Vacant(e) = tensors.entry(i.id()) {
                    e.insert(i.clone());
                    stack.push(i);
                }
            }
        }
    }

    let mut grads: HashMap<usize, Tensor> = HashMap::from([(root.id(), seed)]);
    // Ready tensors by id: ids grow with creation, so the max is the latest op.
    let mut ready = std::collections::BinaryHeap::from([root.id()]);
    while let Some(id) = ready.pop() {
        let t = tensors.remove(&id).expect("every ready tensor was reached from the root");
        let g = grads.remove(&id);
        let Some(node) = t.node() else {
            // Only the root gets here as a leaf; other leaves are accumulated below.
            if let Some(g) = g {
                t.accumulate_grad(g)?;
            }
            continue;
        };
        // No gradient flowed here (every consumer returned None): its inputs are only released.
        let (inputs, input_grads) = match g {
            None => (node.inputs(), Vec::new()),
            Some(g) => {
                let state = node.lock().take().ok_or_else(|| {
                    Error::Backward(format!(
                        "the graph through `{}` was already freed by an earlier backward()",
                        node.name
                    ))
                })?;
                let input_grads = {
                    let _p = crate::profile::backward_of(node.name);
                    (state.backward)(&g, state.output.as_ref())?
                };
                (state.inputs, input_grads)
            }
        };
        let mut input_grads = input_grads.into_iter();
        for input in &inputs {
            let ig = input_grads.next().flatten();
            if !input.requires_grad() {
                continue;
            }
            if let Some(ig) = ig {
                if ig.shape() != input.shape() {
                    return Err(Error::Backward(format!(
                        "`{}` produced a gradient of shape {} for an input of shape {}",
                        node.name,
                        ig.shape(),
                        input.shape()
                    )));
                }
                let sum = match grads.remove(&input.id()) {
                    Some(prev) => prev.add(&ig)?,
                    None => ig,
                };
                grads.insert(input.id(), sum);
            }
            let left = pending.get_mut(&input.id()).expect("counted in the first pass");
            *left -= 1;
            if *left > 0 {
                continue;
            }
            if input.is_leaf() {
                if let Some(g) = grads.remove(&input.id()) {
                    input.accumulate_grad(g)?;
                }
                tensors.remove(&input.id());
            } else {
                ready.push(input.id());
            }
        }
    }
    Ok(())
}
