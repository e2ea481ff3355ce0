//! Fully connected layer with PyTorch's names (`weight` out x in, `bias`) and initialisation
//! (`nn.Linear`: weight and bias uniform in +-1/sqrt(in_features)).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::ops;

/// `y = x W^T + b`, run through [`ops::linear`].
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Wraps existing tensors (weight out x in, optional bias out).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The out x in weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl candle_nn::Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::linear(xs, &self.weight, self.bias.as_ref())
    }
}

/// A linear layer with a bias (`weight`, `bias` under `vb`).
pub fn linear(in_features: usize, out_features: usize, vb: VarBuilder<'_>) -> Result<Linear> {
    let bound = 1.0 / (in_features.max(1) as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let weight = vb.get_with_hints((out_features, in_features), "weight", init)?;
    let bias = vb.get_with_hints(out_features, "bias", init)?;
    Ok(Linear::new(weight, Some(bias)))
}
