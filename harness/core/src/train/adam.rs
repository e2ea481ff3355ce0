//! Adam (Kingma & Ba 2015) as `torch.optim.Adam` computes it, for the recipes that are published
//! with it (DnCNN's common PyTorch port trains with Adam at 1e-3; plain SGD needs hundreds of
//! thousands of steps to leave the identity there, which a CPU benchmark cannot afford).
//!
//! Choice: weight decay is PyTorch's coupled L2 (`g += wd * p` before the moments), not AdamW's
//! decoupled decay, so one `weight_decay` setting means the same penalty under both rules.

use candle_core::Tensor;

/// Adam's moment decay rates and the denominator's epsilon, PyTorch names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamConfig {
    /// Decay of the first moment (the mean of the gradients).
    pub beta1: f64,
    /// Decay of the second moment (the mean of the squared gradients).
    pub beta2: f64,
    /// Added to the square root of the second moment.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl AdamConfig {
    /// Fails unless the betas are in [0, 1) and eps is positive.
    pub fn check(&self) -> crate::Result<()> {
        let beta_ok = |b: f64| (0.0..1.0).contains(&b);
        if beta_ok(self.beta1) && beta_ok(self.beta2) && self.eps.is_finite() && self.eps > 0.0 {
            Ok(())
        } else {
            Err(crate::Error::Config(format!(
                "Adam needs betas in [0, 1) and eps > 0, got beta1 {}, beta2 {}, eps {}",
                self.beta1, self.beta2, self.eps
            )))
        }
    }

    /// One Adam update of a parameter `p` with gradient `g` (weight decay already added) at step
    /// `t` (1 for the first): updates the moments in place and returns the new parameter.
    pub fn update(
        &self,
        p: &Tensor,
        g: &Tensor,
        m: &mut Option<Tensor>,
        v: &mut Option<Tensor>,
        t: u64,
        lr: f64,
    ) -> candle_core::Result<Tensor> {
        let new_m = match m.take() {
            Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
            None => (g * (1.0 - self.beta1))?,
        };
        let g2 = g.sqr()?;
        let new_v = match v.take() {
            Some(v) => ((v * self.beta2)? + (g2 * (1.0 - self.beta2))?)?,
            None => (g2 * (1.0 - self.beta2))?,
        };
        let t = t.max(1) as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2 = 1.0 - self.beta2.powi(t);
        // torch: denom = sqrt(v) / sqrt(bias2) + eps; p -= (lr / bias1) * m / denom.
        let denom = ((new_v.sqrt()? / bias2.sqrt())? + self.eps)?;
        let step = ((&new_m / denom)? * (lr / bias1))?;
        let p = (p - step)?;
        *m = Some(new_m.detach());
        *v = Some(new_v.detach());
        Ok(p)
    }
}
