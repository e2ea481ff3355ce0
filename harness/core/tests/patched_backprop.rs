//! The vendored candle-core stores the first gradient reaching a tensor as it is (see
//! vendor/README.md). These pin the behaviour the rest of the harness relies on: gradients of a
//! tensor used several times are summed, and stored gradients are contiguous even when the op
//! produced a view.

use candle_core::{Device, Tensor, Var};

#[test]
fn a_tensor_used_twice_gets_the_sum_of_both_gradients() {
    let x = Var::from_vec(vec![1f32, -2.0, 3.0], 3, &Device::Cpu).unwrap();
    let t = x.as_tensor();
    // d/dx sum(3x + x*x) = 3 + 2x.
    let y = ((t * 3.0).unwrap() + t.sqr().unwrap()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = grads.get(t).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(g, vec![5.0, -1.0, 9.0]);
}

#[test]
fn a_gradient_that_arrives_as_a_view_is_stored_contiguous() {
    let x = Var::from_vec((0..6).map(|v| v as f32).collect(), (2, 3), &Device::Cpu).unwrap();
    // The transpose's backward hands x a transposed view of the incoming gradient, and the
    // broadcast of sum_all's backward reaches the transpose as a stride-0 view.
    let y = x.as_tensor().t().unwrap().sum_all().unwrap();
    let grads = y.backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    assert!(g.is_contiguous());
    assert_eq!(g.dims(), &[2, 3]);
    assert_eq!(g.to_vec2::<f32>().unwrap(), vec![vec![1.0; 3]; 2]);
}

#[test]
fn the_network_input_of_a_residual_sum_gets_both_paths() {
    let x = Var::from_vec(vec![0.5f32, -1.0], 2, &Device::Cpu).unwrap();
    let t = x.as_tensor();
    let w = Tensor::new(&[2f32, 4.0], &Device::Cpu).unwrap();
    let y = ((t * &w).unwrap() + t).unwrap().relu().unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    // Pre-activations 1.5 and -5: the first passes (w + 1), the second is cut.
    assert_eq!(
        grads.get(t).unwrap().to_vec1::<f32>().unwrap(),
        vec![3.0, 0.0]
    );
}
