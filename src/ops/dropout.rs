//! Dropout with a mask from the seeded global generator.

use crate::{Error, Result, Tensor};

impl Tensor {
    /// Zeroes each element with probability `p` and scales the rest by 1/(1-p), when
    /// `train`; the identity otherwise. The mask comes from the seeded global generator.
    pub fn dropout(&self, p: f64, train: bool) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("dropout", format!("probability {p} is not in [0, 1]")));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        if p == 1.0 {
            return self.mul_scalar(0.0);
        }
        let keep = 1.0 - p;
        let u = Tensor::rand(self.shape().clone(), self.dtype(), self.device())?;
        self.apply_dropout_mask(&u, keep)
    }

    /// Dropout drawing its mask from `gen` instead of the global generator.
    pub fn dropout_with(&self, p: f64, gen: &mut crate::Generator) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("dropout", format!("probability {p} is not in [0, 1]")));
        }
        if p == 1.0 {
            return self.mul_scalar(0.0);
        }
        let u = Tensor::rand_with(self.shape().clone(), self.dtype(), self.device(), gen)?;
        self.apply_dropout_mask(&u, 1.0 - p)
    }

    fn apply_dropout_mask(&self, u: &Tensor, keep: f64) -> Result<Tensor> {
        // u < keep  <=>  keep - u > 0; kept elements are scaled by 1/keep.
        let mask = u.affine(-1.0, keep)?.sign()?.relu()?.mul_scalar(1.0 / keep)?;
        self.mul(&mask)
    }
}
