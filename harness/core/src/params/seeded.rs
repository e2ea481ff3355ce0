//! The seeded initialisation of a [`ParamStore`]: the `VarBuilder` backend that hands out stored
//! tensors and creates missing ones from a ChaCha20 stream keyed by the store's seed and selected
//! by the parameter's name (see the [parent module](super)).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor, Var, bail};
use candle_nn::Init;
use candle_nn::var_builder::SimpleBackend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{Entry, ParamKind, ParamStore};

/// The `VarBuilder` backend of a [`ParamStore`]: existing variables by name, missing ones created
/// from the seeded stream with the kind their name gives (unless `existing_only`, which also
/// records what was handed out). An int8 tensor is handed out as its dequantised values.
pub(super) struct SeededBackend {
    pub(super) store: ParamStore,
    pub(super) existing_only: Option<Arc<Mutex<BTreeSet<String>>>>,
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut entries = self.store.entries();
        if let Some(var) = entries.get(name).map(|e| &e.var) {
            if var.shape() != &shape {
                bail!(
                    "parameter `{name}` has shape {:?} in the store, the model asks for {:?}",
                    var.dims(),
                    shape.dims()
                )
            }
            if let Some(used) = &self.existing_only {
                used.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_string());
            }
            return Ok(var.as_tensor().clone());
        }
        if self.existing_only.is_some() {
            bail!("the parameter store holds a different model: it has no `{name}`")
        }
        let values = init_values(self.store.inner.seed, name, &shape, init);
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        entries.insert(name.to_string(), Entry::new(var, ParamKind::for_name(name)));
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.store.entries().get(name) {
            Some(entry) => Ok(entry.var.as_tensor().clone()),
            None => bail!("the parameter store has no `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.entries().contains_key(name)
    }
}

/// 64-bit FNV-1a: a stable hash of a parameter name (std's hashers may change between releases).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The random stream of one parameter: ChaCha20 keyed by the seed, on the stream picked by the
/// name, so values do not depend on the order in which parameters are created.
fn rng_for(seed: u64, name: &str) -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..24].copy_from_slice(b"protbench-params");
    let mut rng = ChaCha20Rng::from_seed(key);
    rng.set_stream(fnv1a64(name.as_bytes()));
    rng
}

/// The initial values of `name`, following candle's `Init` with a seeded stream.
fn init_values(seed: u64, name: &str, shape: &Shape, init: Init) -> Vec<f64> {
    let n = shape.elem_count();
    let uniform = |lo: f64, up: f64| -> Vec<f64> {
        let mut rng = rng_for(seed, name);
        (0..n)
            .map(|_| lo + (up - lo) * rng.random::<f64>())
            .collect()
    };
    let normal = |mean: f64, std: f64| -> Vec<f64> {
        let mut rng = rng_for(seed, name);
        (0..n)
            .map(|_| mean + std * rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect()
    };
    match init {
        Init::Const(v) => vec![v; n],
        Init::Uniform { lo, up } => uniform(lo, up),
        Init::Randn { mean, stdev } => normal(mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape).max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(-bound, bound)
                }
                candle_nn::init::NormalOrUniform::Normal => normal(0.0, std),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_order_independent_and_seeded() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let init = Init::Uniform { lo: -0.5, up: 0.5 };
        let a = ParamStore::new(7, &dev);
        let va = a.var_builder();
        let x1 = va.get_with_hints((4, 3), "x", init)?;
        let y1 = va.get_with_hints(5, "y", init)?;
        let b = ParamStore::new(7, &dev);
        let vb = b.var_builder();
        let y2 = vb.get_with_hints(5, "y", init)?;
        let x2 = vb.get_with_hints((4, 3), "x", init)?;
        assert_eq!(x1.to_vec2::<f32>()?, x2.to_vec2::<f32>()?);
        assert_eq!(y1.to_vec1::<f32>()?, y2.to_vec1::<f32>()?);
        let c = ParamStore::new(8, &dev);
        let x3 = c.var_builder().get_with_hints((4, 3), "x", init)?;
        assert_ne!(x1.to_vec2::<f32>()?, x3.to_vec2::<f32>()?);
        // Different names draw different values under one seed.
        let z = a.var_builder().get_with_hints((4, 3), "z", init)?;
        assert_ne!(x1.to_vec2::<f32>()?, z.to_vec2::<f32>()?);
        for v in x1.flatten_all()?.to_vec1::<f32>()? {
            assert!((-0.5..0.5).contains(&v));
        }
        Ok(())
    }

    #[test]
    fn uniform_init_has_the_right_moments() -> candle_core::Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        let t =
            store
                .var_builder()
                .get_with_hints(20_000, "w", Init::Uniform { lo: -1.0, up: 1.0 })?;
        let mean = t.mean_all()?.to_scalar::<f32>()?;
        let var = t.sqr()?.mean_all()?.to_scalar::<f32>()?;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "var {var}");
        Ok(())
    }

    #[test]
    fn existing_builder_refuses_new_names_and_records_use() -> candle_core::Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        store.var_builder().get(3, "a")?;
        let (vb, used) = store.existing_var_builder();
        vb.get(3, "a")?;
        assert!(vb.get(3, "b").is_err());
        assert!(vb.get(4, "a").is_err());
        assert_eq!(used.lock().unwrap_or_else(PoisonError::into_inner).len(), 1);
        assert_eq!(store.names(), vec!["a".to_string()]);
        Ok(())
    }
}
