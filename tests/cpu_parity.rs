//! The CPU backend against the f64 reference.

mod common;

common::backend_suite!(signflow::CpuBackend::default());
