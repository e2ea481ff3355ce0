//! SGD with momentum, Nesterov and weight decay, with PyTorch's exact update rule (candle-nn's
//! `SGD` has no momentum, and CIFAR recipes are tuned for PyTorch's semantics); the same
//! optimiser runs [`AdamConfig`]'s rule when a recipe asks for Adam, so the trainer, clipping and
//! checkpoints have one optimiser to deal with.

use candle_core::{Tensor, Var, backprop::GradStore};

use super::adam::AdamConfig;

/// Hyper-parameters of [`Sgd`], PyTorch names and meaning.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Learning rate at the start (schedules scale it per step).
    pub lr: f64,
    /// Momentum factor (0 disables the buffer).
    pub momentum: f64,
    /// Nesterov momentum (needs momentum > 0).
    pub nesterov: bool,
    /// L2 penalty added to the gradient, applied to every parameter as PyTorch does by default.
    pub weight_decay: f64,
    /// Rescale the gradients so that their global L2 norm is at most this
    /// (`torch.nn.utils.clip_grad_norm_` before the step); `None` leaves them alone. Plain SGD
    /// on DnCNN's summed loss blows up without it. Left out of serialised configurations when
    /// unset, so fingerprints of runs without clipping are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// Update with Adam (these betas) instead of SGD momentum; `momentum` and `nesterov` are then
    /// unused. Left out of serialised configurations when unset, like `max_grad_norm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adam: Option<AdamConfig>,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            max_grad_norm: None,
            adam: None,
        }
    }
}

/// Checkpoint name prefix of Adam's second moments.
const SECOND_MOMENT: &str = "adam_v.";
/// Checkpoint name of Adam's step count.
const STEPS: &str = "adam_steps";

/// The optimiser: `g = grad + wd * p; buf = momentum * buf + g; g = nesterov ? g + momentum * buf
/// : buf; p -= lr * g`, the first step setting `buf = g` (dampening 0), as `torch.optim.SGD`.
pub struct Sgd {
    vars: Vec<(String, Var)>,
    /// Momentum buffers (SGD) or first moments (Adam).
    buffers: Vec<Option<Tensor>>,
    /// Adam's second moments (unused by SGD).
    second: Vec<Option<Tensor>>,
    /// Steps taken (Adam's bias correction).
    steps: u64,
    config: SgdConfig,
    lr: f64,
}

impl Sgd {
    /// An optimiser over named variables; the names identify momentum buffers in checkpoints.
    pub fn new(vars: Vec<(String, Var)>, config: SgdConfig) -> crate::Result<Self> {
        if let Some(adam) = &config.adam {
            adam.check()?;
        } else if config.nesterov && config.momentum <= 0.0 {
            return Err(crate::Error::Config(
                "nesterov momentum needs momentum > 0".into(),
            ));
        }
        if let Some(m) = config.max_grad_norm
            && !(m.is_finite() && m > 0.0)
        {
            return Err(crate::Error::Config(format!(
                "the gradient-norm limit must be a positive number, got {m}"
            )));
        }
        if !(config.lr.is_finite() && config.lr >= 0.0) {
            return Err(crate::Error::Config(format!(
                "learning rate must be a non-negative number, got {}",
                config.lr
            )));
        }
        let buffers = vec![None; vars.len()];
        Ok(Self {
            second: vec![None; vars.len()],
            steps: 0,
            vars,
            buffers,
            lr: config.lr,
            config,
        })
    }

    /// The learning rate the next step uses.
    pub fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate for the next steps (schedules call this every step).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Applies one update from the gradients of a backward pass. Variables without a gradient
    /// (frozen or unused) are left untouched, as PyTorch skips parameters whose grad is None.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let SgdConfig {
            momentum,
            nesterov,
            weight_decay,
            max_grad_norm,
            adam,
            ..
        } = self.config;
        self.steps += 1;
        // Global-norm clipping over every gradient this optimiser moves, as clip_grad_norm_.
        let scale = match max_grad_norm {
            None => 1.0,
            Some(max) => {
                let mut sq = 0.0f64;
                for (_, var) in &self.vars {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        sq += g
                            .sqr()?
                            .sum_all()?
                            .to_dtype(candle_core::DType::F64)?
                            .to_scalar::<f64>()?;
                    }
                }
                (max / (sq.sqrt() + 1e-6)).min(1.0)
            }
        };
        for (((_, var), buf), second) in self
            .vars
            .iter()
            .zip(self.buffers.iter_mut())
            .zip(self.second.iter_mut())
        {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Gradients computed by candle's backward pass still carry the op graph of the
            // forward pass; a momentum buffer built from them would keep every step's graph (and
            // its activations) alive forever. Detach once here.
            let grad = if scale < 1.0 {
                (grad.detach() * scale)?
            } else {
                grad.detach()
            };
            let mut g = if weight_decay != 0.0 {
                (grad + (var.as_tensor().detach() * weight_decay)?)?
            } else {
                grad
            };
            if let Some(adam) = &adam {
                let p = adam.update(
                    &var.as_tensor().detach(),
                    &g,
                    buf,
                    second,
                    self.steps,
                    self.lr,
                )?;
                var.set(&p)?;
                continue;
            }
            if momentum != 0.0 {
                let new_buf = match buf.take() {
                    Some(b) => ((b * momentum)? + &g)?,
                    None => g.clone(),
                };
                g = if nesterov {
                    (g + (&new_buf * momentum)?)?
                } else {
                    new_buf.clone()
                };
                *buf = Some(new_buf.detach());
            }
            var.set(&(var.as_tensor().detach() - (g * self.lr)?)?)?;
        }
        Ok(())
    }

    /// Backward pass of `loss` then one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// The momentum buffers by variable name (and Adam's second moments and step count), for
    /// checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state: Vec<(String, Tensor)> = self
            .vars
            .iter()
            .zip(&self.buffers)
            .filter_map(|((name, _), b)| {
                b.as_ref().map(|b| (format!("momentum.{name}"), b.clone()))
            })
            .collect();
        if self.config.adam.is_some() {
            state.extend(
                self.vars
                    .iter()
                    .zip(&self.second)
                    .filter_map(|((name, _), v)| {
                        v.as_ref()
                            .map(|v| (format!("{SECOND_MOMENT}{name}"), v.clone()))
                    }),
            );
            // f64 holds step counts exactly up to 2^53.
            if let Ok(t) = Tensor::new(&[self.steps as f64], &candle_core::Device::Cpu) {
                state.push((STEPS.to_string(), t));
            }
        }
        state
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; unknown names are an error so that a
    /// checkpoint of another model is never half-applied.
    pub fn load_state(
        &mut self,
        state: &std::collections::HashMap<String, Tensor>,
    ) -> crate::Result<()> {
        for (((name, var), buf), second) in self
            .vars
            .iter()
            .zip(self.buffers.iter_mut())
            .zip(self.second.iter_mut())
        {
            for (prefix, slot) in [("momentum.", buf), (SECOND_MOMENT, second)] {
                if let Some(t) = state.get(&format!("{prefix}{name}")) {
                    if t.dims() != var.dims() {
                        return Err(crate::Error::Config(format!(
                            "optimiser state `{prefix}{name}` has shape {:?}, parameter has {:?}",
                            t.dims(),
                            var.dims()
                        )));
                    }
                    *slot = Some(t.to_device(var.device())?.to_dtype(var.dtype())?);
                }
            }
        }
        if let Some(t) = state.get(STEPS) {
            let v = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            self.steps = v.first().copied().unwrap_or(0.0).max(0.0) as u64;
        }
        let adam = self.config.adam.is_some();
        let mut known: std::collections::HashSet<String> = self
            .vars
            .iter()
            .flat_map(|(n, _)| {
                let mut k = vec![format!("momentum.{n}")];
                if adam {
                    k.push(format!("{SECOND_MOMENT}{n}"));
                }
                k
            })
            .collect();
        if adam {
            known.insert(STEPS.to_string());
        }
        if let Some(extra) = state.keys().find(|k| !known.contains(*k)) {
            return Err(crate::Error::Config(format!(
                "checkpoint holds optimiser state `{extra}` for a parameter this model lacks"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Reference: torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    /// on p = [1.0, -2.0] with loss = sum(p^2) for three steps:
    /// ```python
    /// p = torch.tensor([1.0, -2.0], requires_grad=True)
    /// opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    /// for _ in range(3):
    ///     opt.zero_grad(); (p ** 2).sum().backward(); opt.step()
    /// print(p)  # tensor([-0.1117,  0.2233]); full precision -0.111651, 0.223302
    /// ```
    #[test]
    fn matches_torch_nesterov_with_weight_decay() {
        let p = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            max_grad_norm: None,
            adam: None,
        };
        let mut opt = Sgd::new(vec![("p".into(), p.clone())], cfg).unwrap();
        for _ in 0..3 {
            let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.backward_step(&loss).unwrap();
        }
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        let expected = [-0.111_651_f32, 0.223_302];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{v:?} vs {expected:?}");
        }
    }

    #[test]
    fn plain_momentum_differs_from_nesterov() {
        let run = |nesterov| {
            let p = Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap();
            let cfg = SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov,
                weight_decay: 0.0,
                max_grad_norm: None,
                adam: None,
            };
            let mut opt = Sgd::new(vec![("p".into(), p.clone())], cfg).unwrap();
            for _ in 0..2 {
                opt.backward_step(&p.as_tensor().sqr().unwrap().sum_all().unwrap())
                    .unwrap();
            }
            p.as_tensor().to_vec1::<f32>().unwrap()[0]
        };
        // Momentum: x1 = 1 - 0.1*2 = 0.8; buf = 0.9*2 + 1.6 = 3.4; x2 = 0.8 - 0.34 = 0.46.
        assert!((run(false) - 0.46).abs() < 1e-6);
        // Nesterov: x1 = 1 - 0.1*(2 + 1.8) = 0.62; g = 1.24, buf = 3.04, x2 = 0.62 - 0.1*(1.24 + 2.736).
        assert!((run(true) - (0.62 - 0.1 * (1.24 + 2.736))).abs() < 1e-6);
    }

    /// Momentum buffers must not hold the forward graph: a buffer that did kept every step's
    /// activations alive, and a CIFAR-10 run grew past 23 GB before this test existed.
    #[test]
    fn momentum_buffers_hold_no_graph() {
        let w =
            Var::from_tensor(&Tensor::new(&[[0.5f32, -1.0], [2.0, 0.1]], &Device::Cpu).unwrap())
                .unwrap();
        let x = Tensor::new(&[[1.0f32, 2.0]], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], SgdConfig::default()).unwrap();
        for _ in 0..2 {
            let loss = x
                .matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            opt.backward_step(&loss).unwrap();
        }
        for (name, t) in opt.state() {
            assert!(
                !t.track_op(),
                "momentum buffer {name} still tracks the graph"
            );
        }
    }

    /// Reference: torch.optim.Adam([p], lr=0.1, weight_decay=0.01) on p = [1.0, -2.0] with
    /// loss = sum(p^3 / 3 + p) (gradient p^2 + 1) for three steps:
    /// ```python
    /// p = torch.tensor([1.0, -2.0], requires_grad=True)
    /// opt = torch.optim.Adam([p], lr=0.1, weight_decay=0.01)
    /// for _ in range(3):
    ///     opt.zero_grad(); (p ** 3 / 3 + p).sum().backward(); opt.step()
    /// ```
    /// Every gradient is positive, so each bias-corrected step is lr x m / sqrt(v) ~= lr: both
    /// coordinates fall by ~0.1 per step (checked by hand below, to 1e-4).
    #[test]
    fn adam_takes_lr_sized_steps_and_round_trips_its_state() {
        let make =
            || Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let cfg = SgdConfig {
            lr: 0.1,
            weight_decay: 0.01,
            adam: Some(AdamConfig::default()),
            ..SgdConfig::default()
        };
        let loss = |p: &Var| {
            let t = p.as_tensor();
            ((t.powf(3.0).unwrap() / 3.0).unwrap() + t)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let p = make();
        let mut opt = Sgd::new(vec![("p".into(), p.clone())], cfg).unwrap();
        // By hand: the first Adam step is exactly lr x sign(g) (m/sqrt(v) = g/|g| after bias
        // correction), whatever g's size.
        opt.backward_step(&loss(&p)).unwrap();
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (v[0] - 0.9).abs() < 1e-4 && (v[1] + 2.1).abs() < 1e-4,
            "{v:?}"
        );
        // Two more steps, then the same two steps after a save / restore of the state.
        let state: std::collections::HashMap<_, _> = opt.state().into_iter().collect();
        assert!(state.contains_key("adam_v.p") && state.contains_key("adam_steps"));
        // A fresh copy: a Var built from p's tensor would share (and double-step) its storage.
        let q = Var::from_tensor(
            &Tensor::new(p.as_tensor().to_vec1::<f32>().unwrap(), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let mut resumed = Sgd::new(vec![("p".into(), q.clone())], cfg).unwrap();
        resumed.load_state(&state).unwrap();
        for _ in 0..2 {
            opt.backward_step(&loss(&p)).unwrap();
            resumed.backward_step(&loss(&q)).unwrap();
        }
        let (a, b) = (
            p.as_tensor().to_vec1::<f32>().unwrap(),
            q.as_tensor().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b, "a resumed Adam run must repeat the uninterrupted one");
        // Gradients keep their sign, so the steps stay close to lr each.
        assert!(
            (a[0] - 0.7).abs() < 0.01 && (a[1] + 2.3).abs() < 0.01,
            "{a:?}"
        );
    }

    #[test]
    fn rejects_nesterov_without_momentum() {
        let cfg = SgdConfig {
            momentum: 0.0,
            ..SgdConfig::default()
        };
        assert!(Sgd::new(vec![], cfg).is_err());
    }
}
