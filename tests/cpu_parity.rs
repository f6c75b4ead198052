//! The CPU backend against the f64 reference.

mod common;

use signflow::CpuBackend;

#[test]
fn matmul() {
    common::matmul_parity(&CpuBackend::default());
}

#[test]
fn elementwise_casts_and_copies() {
    common::elementwise_parity(&CpuBackend::default());
}

#[test]
fn casts_are_exact_at_special_values() {
    common::casts_are_exact_at_special_values(&CpuBackend::default());
}

#[test]
fn views_keep_their_neighbours() {
    common::views_keep_their_neighbours(&CpuBackend::default());
}

#[test]
fn ops_on_views_of_one_arena() {
    common::ops_on_views_of_one_arena(&CpuBackend::default());
}

#[test]
fn deterministic() {
    common::deterministic(&CpuBackend::default());
}

#[test]
fn bad_operands_are_errors() {
    common::bad_operands_are_errors(&CpuBackend::default());
}

#[test]
fn gelu_bias_grad_and_layernorm() {
    common::row_ops_parity(&CpuBackend::default());
}

#[test]
fn layernorm_rows_alike() {
    common::layernorm_rows_alike(&CpuBackend::default());
}

#[test]
fn no_rows() {
    common::no_rows(&CpuBackend::default());
}

#[test]
fn gelu_value_by_value() {
    common::gelu_values(&CpuBackend::default());
}

#[test]
fn reductions_are_deterministic() {
    common::reductions_are_deterministic(&CpuBackend::default());
}

#[test]
fn loss_pool_and_optimizer() {
    common::loss_pool_and_optimizer_parity(&CpuBackend::default());
}

#[test]
fn dropout_and_attention() {
    common::dropout_and_attention_parity(&CpuBackend::default());
}

#[test]
fn matmul_bias_gelu() {
    common::matmul_bias_gelu_parity(&CpuBackend::default());
}
