//! Op names shared by `selftest`, `bench` and their JSON (DESIGN.md, Machine-readable
//! outputs). The list grows as ops land; names never change.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Matmul,
    Add,
    Scale,
    Cast,
    Copy,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Matmul => "matmul",
            Op::Add => "add",
            Op::Scale => "scale",
            Op::Cast => "cast",
            Op::Copy => "copy",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
