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
pub(crate) fn backward(root: &Tensor, seed: Tensor) -> Result<()> {
    let _guard = NoGradGuard::new();
    // Post-order DFS over tensors that need gradients (iterative: graphs can be deep).
    let mut order: Vec<Tensor> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let inputs = t.node().map(|n| n.inputs()).unwrap_or_default();
        stack.push((t, true));
        for i in inputs {
            if i.requires_grad() && !seen.contains(&i.id()) {
                stack.push((i, false));
            }
        }
    }

    let mut grads: HashMap<usize, Tensor> = HashMap::new();
    grads.insert(root.id(), seed);
    for t in order.into_iter().rev() {
        let Some(g) = grads.remove(&t.id()) else { continue };
        let Some(node) = t.node() else {
            t.accumulate_grad(g)?;
            continue;
        };
        let state = node.lock().take().ok_or_else(|| {
            Error::Backward(format!("the graph through `{}` was already freed by an earlier backward()", node.name))
        })?;
        let input_grads = {
            let _p = crate::profile::backward_of(node.name);
            (state.backward)(&g, state.output.as_ref())?
        };
        for (input, ig) in state.inputs.iter().zip(input_grads) {
            let Some(ig) = ig else { continue };
            if !input.requires_grad() {
                continue;
            }
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
    }
    Ok(())
}
