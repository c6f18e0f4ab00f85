//! Reverse-mode autograd. Every op that tracks gradients gives its output a [`Node`]
//! holding an edge to each input and a backward closure written (beside the forward) in
//! tensor ops. `backward()` walks the nodes in reverse topological order, accumulates one
//! gradient per tensor, stores the gradients of leaves, and frees each node as it goes.
//!
//! An edge holds an input's identity and its own node, not its data (PyTorch's edges point
//! at grad_fns the same way): what a backward needs of its inputs or output, its closure
//! saved. So an activation lives only as long as some op's backward needs it, e.g. a ReLU's
//! input is freed once the next op has run, as only the ReLU's output is saved.

mod grad_mode;

pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};

use crate::{Error, Result, Shape, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Gradients w.r.t. each input (None: no gradient flows there), given the output's gradient
/// and (for ops that asked for it) the detached output.
pub(crate) type BackwardFn = Box<dyn FnOnce(&Tensor, Option<&Tensor>) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// How a node reaches one input in backward: its id (gradients are summed per tensor), its
/// shape (checked against the gradient), its node, and for a leaf that wants a gradient the
/// leaf itself (its `.grad` is filled there; such leaves are parameters, alive anyway).
#[derive(Clone)]
struct Edge {
    id: usize,
    shape: Shape,
    requires_grad: bool,
    node: Option<Arc<Node>>,
    leaf: Option<Tensor>,
}

impl Edge {
    fn of(t: &Tensor) -> Edge {
        let requires_grad = t.requires_grad();
        Edge {
            id: t.id(),
            shape: t.shape().clone(),
            requires_grad,
            node: t.node().cloned(),
            leaf: (t.is_leaf() && requires_grad).then(|| t.clone()),
        }
    }
}

struct NodeState {
    inputs: Vec<Edge>,
    output: Option<Tensor>,
    backward: BackwardFn,
}

/// The recorded op that produced a tensor.
pub struct Node {
    name: &'static str,
    state: Mutex<Option<NodeState>>,
}

impl Node {
    pub(crate) fn new(name: &'static str, inputs: &[&Tensor], output: Option<Tensor>, backward: BackwardFn) -> Node {
        let inputs = inputs.iter().map(|t| Edge::of(t)).collect();
        Node { name, state: Mutex::new(Some(NodeState { inputs, output, backward })) }
    }
    /// The op's name, e.g. "matmul".
    pub fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Edge> {
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
    let root_edge = Edge { leaf: Some(root.clone()), ..Edge::of(root) };
    let mut tensors: HashMap<usize, Edge> = HashMap::from([(root.id(), root_edge.clone())]);
    let mut pending: HashMap<usize, usize> = HashMap::new();
    let mut stack = vec![root_edge];
    while let Some(t) = stack.pop() {
        for i in t.node.as_ref().map(|n| n.inputs()).unwrap_or_default() {
            if i.requires_grad {
                *pending.entry(i.id).or_insert(0) += 1;
                if let std::collections::hash_map::Entry::Vacant(e) = tensors.entry(i.id) {
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
        let Some(node) = t.node else {
            // Only the root gets here as a leaf; other leaves are accumulated below.
            if let (Some(g), Some(leaf)) = (g, &t.leaf) {
                leaf.accumulate_grad(g)?;
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
            if !input.requires_grad {
                continue;
            }
            if let Some(ig) = ig {
                if *ig.shape() != input.shape {
                    return Err(Error::Backward(format!(
                        "`{}` produced a gradient of shape {} for an input of shape {}",
                        node.name,
                        ig.shape(),
                        input.shape
                    )));
                }
                let sum = match grads.remove(&input.id) {
                    Some(prev) => prev.add(&ig)?,
                    None => ig,
                };
                grads.insert(input.id, sum);
            }
            let left = pending.get_mut(&input.id).expect("counted in the first pass");
            *left -= 1;
            if *left > 0 {
                continue;
            }
            if input.node.is_none() {
                if let (Some(g), Some(leaf)) = (grads.remove(&input.id), &input.leaf) {
                    leaf.accumulate_grad(g)?;
                }
                tensors.remove(&input.id);
            } else {
                ready.push(input.id);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Device, Result, Tensor};

    fn leaf(v: Vec<f32>) -> Tensor {
        let n = v.len();
        Tensor::from_vec(v, [n], Device::Cpu).unwrap().requires_grad_().unwrap()
    }

    #[test]
    fn a_node_keeps_only_the_data_its_backward_reads() -> Result<()> {
        let xs = vec![-1.5f32, 0.0, 0.5, 2.0, -0.25];
        let x = leaf(xs.clone());
        // affine saves nothing, relu its output only: h is freed with its handle.
        let h = x.mul_scalar(2.0)?;
        let r = h.relu()?;
        let h_data = h.storage_weak();
        drop(h);
        assert!(h_data.upgrade().is_none(), "relu's node kept its input's data");
        // add saves nothing: both operands of a residual sum are freed with their handles.
        let a = x.mul_scalar(3.0)?;
        let b = r.mul_scalar(-1.0)?;
        let (a_data, b_data) = (a.storage_weak(), b.storage_weak());
        let s = a.add(&b)?;
        drop((a, b));
        assert!(a_data.upgrade().is_none() && b_data.upgrade().is_none(), "add's node kept its inputs' data");
        // mul saves the other operand: both are still there for the gradient.
        let m = x.mul_scalar(1.0)?;
        let m_data = m.storage_weak();
        let p = s.mul(&m)?;
        drop(m);
        assert!(m_data.upgrade().is_some(), "mul freed an operand its backward reads");
        p.sum_all()?.backward()?;
        // By hand: p = (3x - relu(2x))·x, so dp/dx = 2x for x > 0 and 6x for x <= 0
        // (relu'(0) = 0); every term is a small multiple of a power of two, so exact.
        let want: Vec<f32> = xs.iter().map(|&v| if v > 0.0 { 2.0 * v } else { 6.0 * v }).collect();
        assert_eq!(x.grad().unwrap().to_vec::<f32>()?, want);
        Ok(())
    }

    #[test]
    fn an_op_with_an_unneeded_input_gradient_still_routes_the_other() -> Result<()> {
        // Only b wants a gradient: mul saves a (what b's gradient reads), not b.
        let a = Tensor::from_vec(vec![1.0f32, -2.0, 4.0], [3], Device::Cpu)?;
        let b = leaf(vec![0.5, 3.0, -1.0]);
        a.mul(&b)?.sum_all()?.backward()?;
        assert_eq!(b.grad().unwrap().to_vec::<f32>()?, vec![1.0, -2.0, 4.0]);
        Ok(())
    }
}
