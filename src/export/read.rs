//! Reading an ONNX file back as a checkpoint: only files `signflow export` wrote are taken.
//! The metadata must hold the configuration, classes and preprocessing; the graph must be
//! exactly the one the exporter writes for that configuration; the initializers must be
//! exactly the checkpoint's tensors with their shapes. Anything else is refused with what
//! differs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use prost::Message;

use super::graph;
use super::onnx_proto::{
    DimensionValue, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, FLOAT,
};
use super::{CLASSES, LAYOUT, META_PREFIX, OPSETS, SEQ_LEN};
use crate::error::{Error, Result};
use crate::fsio::read::{read_regular_file, NO_CAP};
use crate::model::checkpoint::{check_layout, check_weights_finite, parse_classes};
use crate::model::{Checkpoint, ModelConfig, ParamLayout, Preprocessing};

/// Reads an ONNX file that `signflow export` wrote.
pub fn load_onnx(path: &Path) -> Result<Checkpoint> {
    let bytes = read_regular_file(path, NO_CAP, "ONNX model")?;
    from_onnx_bytes(&bytes, path)
}

/// Reads the bytes of an ONNX file that `signflow export` wrote (`path` names it in errors).
pub fn from_onnx_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
    let err = |detail: String| Error::Onnx {
        path: path.display().to_string(),
        detail,
    };
    let model = ModelProto::decode(bytes).map_err(|e| {
        err(format!(
            "not a readable ONNX file ({e}); it may be truncated or not an ONNX model"
        ))
    })?;
    let foreign = |what: String| {
        let by = match model.producer_name.as_str() {
            super::PRODUCER | "" => String::new(),
            other => format!(" (its producer is `{other}`)"),
        };
        err(format!(
            "is an ONNX model but not one written by signflow export{by}: {what}"
        ))
    };
    let meta: HashMap<String, String> = model
        .metadata_props
        .iter()
        .filter_map(|e| {
            e.key
                .strip_prefix(META_PREFIX)
                .map(|k| (k.to_string(), e.value.clone()))
        })
        .collect();
    if let Some(key) = [CLASSES, SEQ_LEN, LAYOUT]
        .into_iter()
        .find(|k| !meta.contains_key(*k))
    {
        return Err(foreign(format!("no `{META_PREFIX}{key}` metadata")));
    }
    let (config, missing) =
        ModelConfig::from_metadata(&meta, &ModelConfig::default()).map_err(&err)?;
    if let Some(key) = missing.first() {
        return Err(foreign(format!("no `{META_PREFIX}{key}` metadata")));
    }
    config
        .validate()
        .map_err(|e| err(format!("its configuration is not valid: {e}")))?;
    let key = format!("{META_PREFIX}{CLASSES}");
    let classes = parse_classes(&key, &meta[CLASSES], config.num_classes).map_err(err)?;
    let seq_len = meta[SEQ_LEN]
        .parse()
        .ok()
        .filter(|&s| s >= 1 && s <= config.max_seq_len)
        .ok_or_else(|| {
            err(format!(
                "metadata {META_PREFIX}{SEQ_LEN} = {:?} is not a frame count from 1 to max_seq_len",
                meta[SEQ_LEN]
            ))
        })?;

    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version);
    if !opset.is_some_and(|v| OPSETS.contains(&v)) {
        return Err(foreign(format!(
            "its default-domain opset is {}, signflow export writes {} to {}",
            opset.map_or("missing".into(), |v| v.to_string()),
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| err("holds no graph; it may be truncated".into()))?;
    // Each layer has parameters, so a file cannot hold more layers than initializers; checked
    // before the expected graph (whose size follows the layer count) is built.
    if config.num_layers > graph.initializer.len() {
        return Err(err(format!(
            "its metadata declares {} layers but it holds only {} initializers",
            config.num_layers,
            graph.initializer.len()
        )));
    }
    same_graph(graph, &graph::build(&config, seq_len)).map_err(foreign)?;
    let tensors = initializers(graph, &config).map_err(|problems| {
        err(format!(
            "its initializers are not the parameters of its configuration:\n  {}",
            problems.join("\n  ")
        ))
    })?;
    check_weights_finite(&tensors).map_err(err)?;
    check_layout(&format!("{META_PREFIX}{LAYOUT}"), &meta[LAYOUT]).map_err(err)?;
    Ok(Checkpoint {
        config,
        classes,
        preprocessing: Preprocessing {
            seq_len,
            layout: meta[LAYOUT].clone(),
        },
        tensors,
        defaults_used: Vec::new(),
    })
}

/// Checks inputs, outputs and nodes against what the exporter writes; says the first
/// difference.
fn same_graph(found: &GraphProto, expected: &GraphProto) -> std::result::Result<(), String> {
    let signature = |values: &[ValueInfoProto]| {
        values
            .iter()
            .map(describe_value)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (what, found, expected) in [
        ("inputs", &found.input, &expected.input),
        ("outputs", &found.output, &expected.output),
    ] {
        if found != expected {
            return Err(format!(
                "its {what} are {}; signflow export writes {}",
                signature(found),
                signature(expected)
            ));
        }
    }
    if let Some(i) =
        (0..found.node.len().min(expected.node.len())).find(|&i| found.node[i] != expected.node[i])
    {
        let (f, e) = (&found.node[i], &expected.node[i]);
        let detail = if describe_node(f) == describe_node(e) {
            format!("node {i} ({}) has other attributes", describe_node(f))
        } else {
            format!("node {i} is {}, not {}", describe_node(f), describe_node(e))
        };
        return Err(format!(
            "its graph differs from the one signflow export writes for its configuration: \
             {detail}"
        ));
    }
    if found.node.len() != expected.node.len() {
        return Err(format!(
            "its graph has {} nodes; signflow export writes {} for its configuration",
            found.node.len(),
            expected.node.len()
        ));
    }
    Ok(())
}

fn describe_node(n: &NodeProto) -> String {
    format!(
        "{} `{}` ({} -> {})",
        n.op_type,
        n.name,
        n.input.join(", "),
        n.output.join(", ")
    )
}

fn describe_value(v: &ValueInfoProto) -> String {
    let Some(t) = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
        return format!("`{}` (not a tensor)", v.name);
    };
    let dims: Vec<String> = t
        .shape
        .iter()
        .flat_map(|s| &s.dim)
        .map(|d| match &d.value {
            Some(DimensionValue::DimValue(n)) => n.to_string(),
            Some(DimensionValue::DimParam(p)) => p.clone(),
            None => "?".into(),
        })
        .collect();
    format!("`{}` (type {}) [{}]", v.name, t.elem_type, dims.join(", "))
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The parameters by name, or every way the initializers differ from them.
fn initializers(
    graph: &GraphProto,
    config: &ModelConfig,
) -> std::result::Result<Tensors, Vec<String>> {
    let layout = ParamLayout::new(config);
    let mut by_name: HashMap<&str, &TensorProto> = HashMap::new();
    let mut problems = Vec::new();
    for t in &graph.initializer {
        if layout.get(&t.name).is_none() {
            problems.push(format!("unexpected initializer `{}`", t.name));
        } else if by_name.insert(&t.name, t).is_some() {
            problems.push(format!("initializer `{}` appears twice", t.name));
        }
    }
    let mut tensors = BTreeMap::new();
    for entry in &layout.entries {
        let Some(t) = by_name.get(entry.name.as_str()) else {
            problems.push(format!("missing {} {:?}", entry.name, entry.shape));
            continue;
        };
        let want: Vec<i64> = entry.shape.iter().map(|&n| n as i64).collect();
        if t.dims != want {
            problems.push(format!(
                "{} has shape {:?}, the configuration needs {:?}",
                entry.name, t.dims, entry.shape
            ));
            continue;
        }
        match values(t, entry.len()) {
            Ok(v) => {
                tensors.insert(entry.name.clone(), (entry.shape.clone(), v));
            }
            Err(why) => problems.push(format!("{}: {why}", entry.name)),
        }
    }
    if problems.is_empty() {
        Ok(tensors)
    } else {
        Err(problems)
    }
}

/// The `n` f32 values of an initializer, from its raw bytes or its `float_data`.
fn values(t: &TensorProto, n: usize) -> std::result::Result<Vec<f32>, String> {
    if t.data_location != 0 {
        return Err("its data is stored outside the file; signflow export keeps it inside".into());
    }
    if t.data_type != FLOAT {
        return Err(format!(
            "data type {} where signflow export writes f32 ({FLOAT})",
            t.data_type
        ));
    }
    if !t.raw_data.is_empty() {
        if t.raw_data.len() != n * 4 {
            return Err(format!(
                "{} bytes of data for {n} f32 values",
                t.raw_data.len()
            ));
        }
        Ok(bytemuck::pod_collect_to_vec(&t.raw_data))
    } else if t.float_data.len() == n {
        Ok(t.float_data.clone())
    } else {
        Err(format!(
            "{} values where {n} are needed",
            t.float_data.len()
        ))
    }
}
