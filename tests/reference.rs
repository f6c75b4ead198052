//! The f64 reference against hand-computed cases: the oracle must be right before it judges.

use signflow::reference;
use signflow::{DType, MatmulSpec};

#[test]
fn matmul_by_hand_in_every_layout() {
    // A = [[1, 2, 3], [4, 5, 6]] (2x3), B = [[7, 8], [9, 10], [11, 12]] (3x2).
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let a_t = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
    let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    let b_t = [7.0, 9.0, 11.0, 8.0, 10.0, 12.0];
    let want = [58.0, 64.0, 139.0, 154.0];
    for (ta, tb, a, b) in [
        (false, false, &a, &b),
        (false, true, &a, &b_t),
        (true, false, &a_t, &b),
        (true, true, &a_t, &b_t),
    ] {
        let spec = MatmulSpec::new(2, 2, 3).transpose(ta, tb);
        assert_eq!(
            reference::matmul(a, b, None, &spec),
            want,
            "layout {}",
            spec.layout()
        );
    }
    let spec = MatmulSpec::new(2, 2, 3);
    assert_eq!(
        reference::matmul(&a, &b, Some(&[0.5, -1.0]), &spec),
        [58.5, 63.0, 139.5, 153.0]
    );
}

#[test]
fn batched_strided_matmul_by_hand() {
    // Two 1x1x2 items; B shared (stride 0); C items 3 apart with a gap left at zero.
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [10.0, 100.0];
    let spec = MatmulSpec::new(1, 1, 2).strided(2, 2, 0, 3);
    assert_eq!(
        reference::matmul(&a, &b, None, &spec),
        [210.0, 0.0, 0.0, 430.0]
    );
}

#[test]
fn elementwise_and_casts_by_hand() {
    assert_eq!(reference::add(&[1.0, -2.0], &[0.5, 2.0]), [1.5, 0.0]);
    assert_eq!(reference::scale(&[1.0, -2.0], -0.5), [-0.5, 1.0]);
    // 1 + 2^-11 is halfway between two f16 values: ties to even gives 1.
    let halfway = 1.0 + 2f64.powi(-11);
    assert_eq!(
        reference::cast(&[halfway, 70000.0, 2f64.powi(-24)], DType::F16),
        [1.0, f64::INFINITY, 2f64.powi(-24)]
    );
    // bf16 keeps 8 significant bits: 1 + 2^-8 is halfway, ties to even gives 1.
    assert_eq!(
        reference::cast(&[1.0 + 2f64.powi(-8), 3.0], DType::Bf16),
        [1.0, 3.0]
    );
}
