//! Kernel configuration derived from the adapter's limits: the one place where tile and
//! workgroup sizes are chosen.

use crate::device::{CoopMatrixShape, DeviceInfo};
use crate::dtype::DType;

/// A register-tiled matrix product's shape: each workgroup computes a `bm`×`bn` tile of C in
/// steps of `bk`, each thread a `tm`×`tn` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulTile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl MatmulTile {
    /// Candidates, largest first. 128×128 with 8×8 per thread suits discrete GPUs; the smaller
    /// ones fit adapters with few invocations or little workgroup memory, and small products.
    pub const CANDIDATES: [MatmulTile; 3] = [
        MatmulTile {
            bm: 128,
            bn: 128,
            bk: 16,
            tm: 8,
            tn: 8,
        },
        MatmulTile {
            bm: 64,
            bn: 64,
            bk: 16,
            tm: 4,
            tn: 4,
        },
        MatmulTile {
            bm: 32,
            bn: 32,
            bk: 16,
            tm: 4,
            tn: 4,
        },
    ];

    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    pub fn workgroup_bytes(&self) -> u32 {
        4 * self.bk * (self.bm + self.bn)
    }

    pub fn name(&self) -> String {
        format!(
            "{}x{}x{}_{}x{}",
            self.bm, self.bn, self.bk, self.tm, self.tn
        )
    }

    fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.threads() <= limits.max_compute_invocations_per_workgroup
            && self.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
            && self.bn / self.tn <= limits.max_compute_workgroup_size_x
            && self.bm / self.tm <= limits.max_compute_workgroup_size_y
    }
}

/// Tile and workgroup sizes for one adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    /// Tiles that fit the adapter, largest first (never empty).
    pub matmul_tiles: Vec<MatmulTile>,
    /// Invocations per workgroup of the elementwise kernels.
    pub elementwise_workgroup: u32,
    pub max_workgroups_per_dimension: u32,
    /// Workgroup memory available to one workgroup, in bytes.
    pub workgroup_storage_bytes: u32,
    /// A tile every product uses, whatever its size (for tests and tuning).
    pub forced_matmul_tile: Option<MatmulTile>,
    /// Whether f16 products run on cooperative matrices (matmul_coop.wgsl): set where the
    /// switch allows them and [`coop_matrix_usable`] holds, cleared when the check on opening
    /// the adapter fails.
    pub coop_matrix: bool,
}

/// The cooperative-matrix product's tile (matmul_coop.wgsl): a workgroup of
/// [`COOP_WORKGROUP`] invocations computes COOP_BM×COOP_BN of C in K steps of COOP_BK, each
/// subgroup a COOP_SM×COOP_SN block of 16×16 matrices.
pub const COOP_BM: u32 = 64;
pub const COOP_BN: u32 = 64;
pub const COOP_BK: u32 = 32;
pub const COOP_SM: u32 = 32;
pub const COOP_SN: u32 = 32;
/// Four subgroups of 32 (NVIDIA), one block each.
pub const COOP_WORKGROUP: u32 = 128;

/// Workgroup memory of the cooperative-matrix product: the f16 slices of op(A) and op(B), and
/// one f32 16×16 scratch per subgroup block for the epilogue.
pub const COOP_WORKGROUP_BYTES: u32 =
    2 * COOP_BK * (COOP_BM + COOP_BN) + 4 * 256 * (COOP_BM / COOP_SM) * (COOP_BN / COOP_SN);

/// The narrowest subgroup matmul_coop.wgsl runs with: one per block of its tile.
pub const COOP_MIN_SUBGROUP: u32 = COOP_WORKGROUP / ((COOP_BM / COOP_SM) * (COOP_BN / COOP_SN));

/// Whether the adapter `info` describes, offering `features`, can run matmul_coop.wgsl: cooperative matrices with the 16×16 f16 → f32 configuration, f16 in
/// shaders, subgroups from [`COOP_MIN_SUBGROUP`] to the whole workgroup wide (the kernel gives
/// each a block of its tile), and room for its workgroup.
pub fn coop_matrix_usable(
    features: wgpu::Features,
    info: &DeviceInfo,
    limits: &wgpu::Limits,
) -> bool {
    let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP;
    features.contains(needed)
        && info
            .cooperative_matrix
            .contains(&CoopMatrixShape::F16_16X16_F32)
        && info.subgroup_min >= COOP_MIN_SUBGROUP
        && info.subgroup_max <= COOP_WORKGROUP
        && COOP_WORKGROUP <= limits.max_compute_invocations_per_workgroup
        && COOP_WORKGROUP <= limits.max_compute_workgroup_size_x
        && COOP_WORKGROUP_BYTES <= limits.max_compute_workgroup_storage_size
}

/// The elementwise kernels' preferred workgroup size; also the most the reduction kernels'
/// workgroup array holds (MAX_WG in workgroup_reduce.wgsl, generated from it).
pub const ELEMENTWISE_WORKGROUP: u32 = 256;

/// Rows each invocation of the column-sum kernels adds up (column_sums.wgsl): enough work per
/// invocation, and enough blocks to fill the device for a few thousand rows.
pub const COLUMN_ROW_BLOCK: u32 = 64;

/// Head sizes the attention kernels are generated for; a head is run by the smallest that
/// holds it (its extra dimensions are zeros).
pub const ATTENTION_HEAD_DIMS: [u32; 4] = [16, 32, 64, 128];

/// Queries per attention workgroup (BQ in attention.wgsl): the largest the sequence fills,
/// since every query of a workgroup shares each tile of keys it loads, while a block longer
/// than the sequence leaves invocations idle (BENCHMARKS.md has the measurements). Key tiles
/// never exceed it.
pub const ATTENTION_QUERY_BLOCKS: [u32; 3] = [64, 128, 256];

/// Keys of a tile that attention_fwd and attention_dq take at once (FWD_KEYS, DQ_KEYS in
/// attention.wgsl): independent dot products in flight, and for the forward one rescale of
/// its accumulators per that many keys, against the registers each costs; attention_dkv,
/// which holds twice the rows, is fastest one query at a time (BENCHMARKS.md has the
/// measurements).
pub const ATTENTION_FORWARD_KEYS: u32 = 4;
pub const ATTENTION_DQ_KEYS: u32 = 2;

/// The attention variant for `dtype` storage and heads of `head_dim` over `seq` frames: the
/// smallest generated head size that holds it, the largest query block the sequence fills (the smallest when it
/// fills none), and the largest power-of-two key tile (up to BQ, at least the keys taken at
/// once) whose two tiles of rows and two per-row arrays fit the adapter's workgroup memory
/// (tiles hold f32 whatever the storage dtype). WebGPU's minimum of 16 KiB holds the smallest
/// tile at every head size.
pub fn attention_variant(
    dtype: DType,
    head_dim: usize,
    seq: usize,
    workgroup_bytes: u32,
) -> AttentionVariant {
    let dim = ATTENTION_HEAD_DIMS
        .into_iter()
        .find(|&d| d as usize >= head_dim)
        .unwrap_or(ATTENTION_HEAD_DIMS[3]);
    let bq = ATTENTION_QUERY_BLOCKS
        .into_iter()
        .rev()
        .find(|&q| q as usize <= seq)
        .unwrap_or(ATTENTION_QUERY_BLOCKS[0]);
    let mut bk = bq;
    while bk > MIN_ATTENTION_KEY_TILE && 4 * (2 * bk * dim + 2 * bk) > workgroup_bytes {
        bk /= 2;
    }
    AttentionVariant {
        dtype,
        head_dim: dim,
        bq,
        bk,
    }
}

/// The smallest key tile: it holds the keys attention_fwd and attention_dq take at once.
const MIN_ATTENTION_KEY_TILE: u32 = if ATTENTION_FORWARD_KEYS > ATTENTION_DQ_KEYS {
    ATTENTION_FORWARD_KEYS
} else {
    ATTENTION_DQ_KEYS
};

/// Every variant [`attention_variant`] can choose, on any adapter.
pub fn attention_variants() -> Vec<AttentionVariant> {
    let mut all = Vec::new();
    for dtype in DType::ALL {
        for head_dim in ATTENTION_HEAD_DIMS {
            for bq in ATTENTION_QUERY_BLOCKS {
                let mut bk = bq;
                while bk >= MIN_ATTENTION_KEY_TILE {
                    all.push(AttentionVariant {
                        dtype,
                        head_dim,
                        bq,
                        bk,
                    });
                    bk /= 2;
                }
            }
        }
    }
    all
}

/// One generated attention kernel: qkv, out, dout and dqkv in `dtype`, heads of up to
/// `head_dim`, `bq` queries per workgroup, keys streamed in tiles of `bk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionVariant {
    pub dtype: DType,
    pub head_dim: u32,
    pub bq: u32,
    pub bk: u32,
}

/// Elements each invocation of the whole-arena reductions (gradient norm, finite check)
/// handles (optim.wgsl).
pub const REDUCE_ITEMS: u32 = 16;

impl KernelConfig {
    pub fn for_limits(limits: &wgpu::Limits) -> KernelConfig {
        let mut matmul_tiles: Vec<MatmulTile> = MatmulTile::CANDIDATES
            .into_iter()
            .filter(|t| t.fits(limits))
            .collect();
        if matmul_tiles.is_empty() {
            // WebGPU's minimum limits (256 invocations, 16 KiB) admit every candidate; an
            // adapter below them still gets the smallest, and fails loudly at pipeline
            // creation rather than silently.
            matmul_tiles.push(MatmulTile::CANDIDATES[2]);
        }
        KernelConfig {
            matmul_tiles,
            // A power of two: the reduction kernels halve it down a tree.
            elementwise_workgroup: 1
                << ELEMENTWISE_WORKGROUP
                    .min(limits.max_compute_invocations_per_workgroup)
                    .min(limits.max_compute_workgroup_size_x)
                    .ilog2(),
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            workgroup_storage_bytes: limits.max_compute_workgroup_storage_size,
            forced_matmul_tile: None,
            coop_matrix: false,
        }
    }

    /// The tile for an M×N product: the largest (the fewest operand loads per multiply-add)
    /// where its grid fills a large GPU, else the second: 64×64, as many invocations with a
    /// quarter of the work each (the two need the same limits, so 32×32 is taken only where it
    /// alone fits). BENCHMARKS.md has the measurements behind the threshold.
    pub fn matmul_tile(&self, m: usize, n: usize, batch: usize) -> MatmulTile {
        if let Some(tile) = self.forced_matmul_tile {
            return tile;
        }
        match self.matmul_tiles[..] {
            [largest, next, ..] if matmul_workgroups(&largest, m, n, batch) < FULL_GRID => next,
            [largest, ..] => largest,
            [] => unreachable!("for_limits always keeps a tile"),
        }
    }
}

/// Workgroups that keep a large GPU busy: about two per multiprocessor of an H100 (132).
pub const FULL_GRID: usize = 256;

/// The least K a slice of a product split over K takes: below it, the partial products' extra
/// pass costs more than the idle multiprocessors it puts to work.
const MIN_SPLIT_K: usize = 256;

/// A slice's K extent is a multiple of this: of every tile's BK, and of 4 (vec4 loads).
const SPLIT_K_ALIGN: usize = 16;

/// The workgroups of an M×N product of `batch` items in tiles of `tile`.
pub fn matmul_workgroups(tile: &MatmulTile, m: usize, n: usize, batch: usize) -> usize {
    m.div_ceil(tile.bm as usize) * n.div_ceil(tile.bn as usize) * batch.max(1)
}

/// For one product of K = `k` whose grid has `workgroups`: the K extent of each slice when
/// splitting over K fills the device better (weight gradients: small M×N, K = every frame of
/// the batch), None when it does not pay.
pub fn matmul_k_split(workgroups: usize, k: usize) -> Option<usize> {
    if workgroups >= FULL_GRID || k < 2 * MIN_SPLIT_K {
        return None;
    }
    let slices = FULL_GRID.div_ceil(workgroups).min(k / MIN_SPLIT_K);
    let slice = k.div_ceil(slices).next_multiple_of(SPLIT_K_ALIGN);
    (slice < k).then_some(slice)
}

// Every tile's BK divides a slice's K extent, so that no tile straddles two slices.
const _: () = {
    let mut i = 0;
    while i < MatmulTile::CANDIDATES.len() {
        assert!(SPLIT_K_ALIGN % MatmulTile::CANDIDATES[i].bk as usize == 0);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_variant_follows_head_size_sequence_and_workgroup_memory() {
        let v = |d, t, bytes| {
            let AttentionVariant {
                head_dim, bq, bk, ..
            } = attention_variant(DType::F32, d, t, bytes);
            (head_dim, bq, bk)
        };
        // The model's shape, and a sequence shorter than any block.
        assert_eq!(v(32, 64, 49152), (32, 64, 64));
        assert_eq!(v(5, 1, 49152), (16, 64, 64));
        // Longer sequences take larger blocks; the key tile shrinks to fit 48 KiB at d 64.
        assert_eq!(v(64, 1024, 49152), (64, 256, 64));
        assert_eq!(v(32, 255, 49152), (32, 128, 128));
        assert_eq!(v(33, 127, 49152), (64, 64, 64));
        // WebGPU's minimum workgroup memory still holds a tile at every head size.
        assert_eq!(v(128, 200, 16384), (128, 128, 8));
    }

    /// An adapter as an NVIDIA card describes itself, as far as cooperative matrices go.
    fn coop_adapter(configs: Vec<CoopMatrixShape>) -> DeviceInfo {
        DeviceInfo {
            cooperative_matrix: configs,
            subgroup_min: 32,
            subgroup_max: 32,
            ..DeviceInfo::cpu()
        }
    }

    #[test]
    fn coop_matrix_needs_the_feature_the_configuration_f16_and_subgroups() {
        let all = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP;
        let limits = wgpu::Limits::default();
        let nvidia = coop_adapter(vec![CoopMatrixShape::F16_16X16_F32]);
        assert!(coop_matrix_usable(all, &nvidia, &limits));
        for missing in [
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            wgpu::Features::SHADER_F16,
            wgpu::Features::SUBGROUP,
        ] {
            assert!(!coop_matrix_usable(all - missing, &nvidia, &limits));
        }
        // Apple's simdgroup matrices (8×8 only) and f16 accumulators do not serve.
        let others = coop_adapter(vec![
            CoopMatrixShape {
                m: 8,
                n: 8,
                k: 8,
                ..CoopMatrixShape::F16_16X16_F32
            },
            CoopMatrixShape {
                cr: "f16",
                ..CoopMatrixShape::F16_16X16_F32
            },
        ]);
        assert!(!coop_matrix_usable(all, &others, &limits));
        assert!(!coop_matrix_usable(all, &coop_adapter(vec![]), &limits));
        // Subgroups of 64 (AMD) take turns; 16 wide would leave blocks without one.
        let amd = DeviceInfo {
            subgroup_max: 64,
            ..nvidia.clone()
        };
        assert!(coop_matrix_usable(all, &amd, &limits));
        let narrow = DeviceInfo {
            subgroup_min: 16,
            ..nvidia.clone()
        };
        assert!(!coop_matrix_usable(all, &narrow, &limits));
        let small = wgpu::Limits {
            max_compute_workgroup_storage_size: COOP_WORKGROUP_BYTES - 1,
            ..limits
        };
        assert!(!coop_matrix_usable(all, &nvidia, &small));
    }

    #[test]
    fn attention_variants_list_every_choice() {
        let all = attention_variants();
        for dtype in DType::ALL {
            for d in [1, 16, 17, 33, 64, 65, 128, 200] {
                for t in [1, 63, 64, 127, 128, 255, 256, 1000] {
                    for bytes in [0, 16384, 32768, 49152, 65536] {
                        assert!(all.contains(&attention_variant(dtype, d, t, bytes)));
                    }
                }
            }
        }
    }
}
