//! Checks the layers and models against PyTorch.
//!
//! The fixtures under tests/fixtures were written by `ci/torch/make_reference.py` (torch 2.15 CPU,
//! `torch.manual_seed(0)`); regenerate them with
//! `~/.torchref/bin/python ci/torch/make_reference.py` from the repository root. Tolerances are
//! on the largest absolute difference relative to `max(1, max |expected|)`.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Module, ModuleT, VarBuilder};
use common::{assert_close, fixture_path, get, load_fixture};
use harness_core::nn::{
    self, BatchNorm2d, Conv2d, Conv2dConfig, Linear, batch_norm2d, conv2d, conv2d_no_bias, linear,
};
use harness_core::params::ParamStore;
use harness_core::zoo::{self, Arch, ModelSpec};

/// Layer outputs: f32 arithmetic in a different order than PyTorch's.
const LAYER_TOL: f32 = 1e-5;
/// Whole networks and gradients.
const NET_TOL: f32 = 1e-4;

#[test]
fn conv2d_matches_torch() -> Result<()> {
    let f = load_fixture("layers.safetensors");
    // name -> (stride, padding, groups), as CASES in make_reference.py:
    //   conv_s1 (2,3,7,7) -> 4, k3 s1 p1 bias; conv_s2 (2,3,8,8) -> 5, k3 s2 p1;
    //   conv_1x1_s2 (2,4,7,7) -> 6, k1 s2 p0; conv_groups (2,4,6,6) -> 6, k3 s1 p1 g2 bias;
    //   conv_dw_s1 (2,6,6,6) k3 s1 p1 g6; conv_dw_s2 (2,6,7,7) k3 s2 p1 g6 bias;
    //   conv_dw_s2_even (1,5,8,8) k3 s2 p1 g5.
    let cases = [
        ("conv_s1", 1, 1, 1),
        ("conv_s2", 2, 1, 1),
        ("conv_1x1_s2", 2, 0, 1),
        ("conv_groups", 1, 1, 2),
        ("conv_dw_s1", 1, 1, 6),
        ("conv_dw_s2", 2, 1, 6),
        ("conv_dw_s2_even", 2, 1, 5),
    ];
    for (name, stride, padding, groups) in cases {
        let config = Conv2dConfig::new(stride, padding).with_groups(groups);
        let conv = Conv2d::new(
            get(&f, &format!("{name}.weight")).clone(),
            f.get(&format!("{name}.bias")).cloned(),
            config,
        );
        let y = conv.forward(get(&f, &format!("{name}.x")))?;
        assert_close(&y, get(&f, &format!("{name}.y")), LAYER_TOL, name);
    }
    Ok(())
}

fn var(t: &Tensor) -> Result<Var> {
    Var::from_tensor(&t.copy()?)
}

#[test]
fn batch_norm_matches_torch_in_train_and_eval_mode() -> Result<()> {
    let f = load_fixture("layers.safetensors");
    let nbt = Var::from_tensor(&Tensor::zeros((), DType::I64, &Device::Cpu)?)?;
    let bn = BatchNorm2d::new(
        get(&f, "bn.weight").clone(),
        get(&f, "bn.bias").clone(),
        var(get(&f, "bn.running_mean0"))?,
        var(get(&f, "bn.running_var0"))?,
        nbt,
    )?;
    for step in [1, 2] {
        let y = bn.forward_t(get(&f, &format!("bn.train{step}.x")), true)?;
        assert_close(
            &y,
            get(&f, &format!("bn.train{step}.y")),
            LAYER_TOL,
            &format!("bn train {step} output"),
        );
        assert_close(
            bn.running_mean().as_tensor(),
            get(&f, &format!("bn.train{step}.running_mean")),
            LAYER_TOL,
            &format!("bn train {step} running_mean"),
        );
        assert_close(
            bn.running_var().as_tensor(),
            get(&f, &format!("bn.train{step}.running_var")),
            LAYER_TOL,
            &format!("bn train {step} running_var"),
        );
    }
    assert_eq!(bn.num_batches_tracked().as_tensor().to_scalar::<i64>()?, 2);
    let y = bn.forward_t(get(&f, "bn.eval.x"), false)?;
    assert_close(&y, get(&f, "bn.eval.y"), LAYER_TOL, "bn eval output");
    // Eval mode leaves the state alone.
    assert_eq!(bn.num_batches_tracked().as_tensor().to_scalar::<i64>()?, 2);
    let before = bn.running_mean().as_tensor().copy()?;
    bn.forward_t(get(&f, "bn.eval.x"), false)?;
    assert_close(bn.running_mean().as_tensor(), &before, 0.0, "bn eval state");
    Ok(())
}

#[test]
fn linear_pooling_and_activations_match_torch() -> Result<()> {
    let f = load_fixture("layers.safetensors");
    let lin = Linear::new(
        get(&f, "linear.weight").clone(),
        Some(get(&f, "linear.bias").clone()),
    );
    assert_close(
        &lin.forward(get(&f, "linear.x"))?,
        get(&f, "linear.y"),
        LAYER_TOL,
        "linear",
    );
    for case in ["pool", "pool_odd"] {
        let x = get(&f, &format!("{case}.x"));
        assert_close(
            &nn::max_pool2d(x, 2, 2)?,
            get(&f, &format!("{case}.max2")),
            0.0,
            &format!("{case} max"),
        );
        assert_close(
            &nn::avg_pool2d(x, 2, 2)?,
            get(&f, &format!("{case}.avg2")),
            LAYER_TOL,
            &format!("{case} avg"),
        );
    }
    let gap = nn::global_avg_pool2d(get(&f, "pool.x"))?;
    assert_close(&gap, get(&f, "pool.gap"), LAYER_TOL, "global avg pool");
    let x = get(&f, "act.x");
    assert_close(&nn::relu(x)?, get(&f, "act.relu"), 0.0, "relu");
    assert_close(&nn::relu6(x)?, get(&f, "act.relu6"), 0.0, "relu6");
    Ok(())
}

/// make_reference.py's GradNet: conv3x3(3->6, no bias) - bn - relu - depthwise conv3x3 stride 2
/// (bias) - bn - relu - maxpool 2 - global avg pool - linear(6->4).
struct GradNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    fc: Linear,
}

impl GradNet {
    fn new(vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            conv1: conv2d_no_bias(3, 6, 3, Conv2dConfig::new(1, 1), vb.pp("conv1"))?,
            bn1: batch_norm2d(6, vb.pp("bn1"))?,
            conv2: conv2d(
                6,
                6,
                3,
                Conv2dConfig::new(2, 1).with_groups(6),
                vb.pp("conv2"),
            )?,
            bn2: batch_norm2d(6, vb.pp("bn2"))?,
            fc: linear(6, 4, vb.pp("fc"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = nn::relu(&self.bn1.forward_t(&self.conv1.forward(xs)?, true)?)?;
        let ys = nn::relu(&self.bn2.forward_t(&self.conv2.forward(&ys)?, true)?)?;
        let ys = nn::max_pool2d(&ys, 2, 2)?;
        self.fc.forward(&nn::global_avg_pool2d(&ys)?)
    }
}

#[test]
fn gradients_match_torch() -> Result<()> {
    let f = load_fixture("grad_net.safetensors");
    let store = ParamStore::new(0, &Device::Cpu);
    let net = GradNet::new(store.var_builder())?;
    for name in store.names() {
        let value = get(&f, &format!("param.{name}"));
        let var = store.get(&name).expect("var");
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    let labels = get(&f, "labels").to_dtype(DType::U32)?;
    let logits = net.forward(get(&f, "x"))?;
    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
    assert_close(&loss.reshape(1)?, get(&f, "loss"), NET_TOL, "loss");
    let grads = loss.backward()?;
    let trainable = store.trainable();
    assert_eq!(trainable.len(), 9);
    let mut worst = Vec::new();
    for (name, var) in trainable {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let diff = common::max_abs_diff(grad, get(&f, &format!("grad.{name}")))?;
        println!("grad {name}: max abs diff {diff:.3e}");
        worst.push((name, grad.clone()));
    }
    for (name, grad) in worst {
        assert_close(
            &grad,
            get(&f, &format!("grad.{name}")),
            NET_TOL,
            &format!("grad {name}"),
        );
    }
    for (name, t) in store.buffers() {
        if name.contains("running") {
            assert_close(
                &t,
                get(&f, &format!("after.{name}")),
                LAYER_TOL,
                &format!("after {name}"),
            );
        }
    }
    Ok(())
}

#[test]
fn resnet20_reproduces_torch_logits() -> harness_core::Result<()> {
    let expected = load_fixture("resnet20_expected.safetensors");
    let store = ParamStore::new(0, &Device::Cpu);
    let model = zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &store)?;
    store.load(&fixture_path("resnet20_torch.safetensors"))?;
    let counter = store.get("bn1.num_batches_tracked").expect("counter");
    assert_eq!(counter.as_tensor().to_scalar::<i64>()?, 5);

    let x = get(&expected, "x");
    let logits = model.forward_t(x, false)?;
    assert_close(
        &logits,
        get(&expected, "logits_eval"),
        NET_TOL,
        "resnet20 eval logits",
    );

    let logits = model.forward_t(x, true)?;
    assert_close(
        &logits,
        get(&expected, "logits_train"),
        NET_TOL,
        "resnet20 train logits",
    );
    let rm = store.get("bn1.running_mean").expect("bn1");
    assert_close(
        rm.as_tensor(),
        get(&expected, "after_train.bn1.running_mean"),
        NET_TOL,
        "bn1.running_mean after",
    );
    let rv = store.get("layer3.2.bn2.running_var").expect("layer3.2.bn2");
    assert_close(
        rv.as_tensor(),
        get(&expected, "after_train.layer3.2.bn2.running_var"),
        NET_TOL,
        "layer3.2.bn2.running_var after",
    );
    assert_eq!(counter.as_tensor().to_scalar::<i64>()?, 6);
    Ok(())
}

/// Trainable parameter counts printed by `ci/torch/make_reference.py` (PyTorch's
/// `sum(p.numel() for p in model.parameters())` over ci/torch/models.py).
#[test]
fn parameter_counts_match_torch() -> harness_core::Result<()> {
    let cases: [(ModelSpec, usize); 12] = [
        (ModelSpec::new(Arch::Resnet20, 10), 272_474),
        (ModelSpec::new(Arch::Resnet56, 10), 855_770),
        (ModelSpec::new(Arch::Vgg11, 10), 9_231_114),
        (ModelSpec::new(Arch::Vgg16, 10), 14_728_266),
        (ModelSpec::new(Arch::Vgg19, 10), 20_040_522),
        (ModelSpec::new(Arch::VggSmall, 10), 160_234),
        (ModelSpec::new(Arch::MobilenetV2, 10), 2_296_922),
        (ModelSpec::new(Arch::Dncnn, 10), 558_400),
        (ModelSpec::new(Arch::Dncnn, 10).with_in_channels(1), 556_096),
        (ModelSpec::new(Arch::Vgg11, 10).with_width(0.5), 2_311_562),
        (
            ModelSpec::new(Arch::MobilenetV2, 10).with_width(0.5),
            712_562,
        ),
        (ModelSpec::new(Arch::Resnet20, 100), 278_324),
    ];
    for (spec, expected) in cases {
        let store = ParamStore::new(0, &Device::Cpu);
        zoo::build(&spec, &store)?;
        assert_eq!(store.num_parameters(), expected, "{spec:?}");
    }
    Ok(())
}
