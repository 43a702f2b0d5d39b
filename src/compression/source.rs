//! The original checkpoint as a compression reads it: which weight matrices it considers (from config.json and the
//! tensor table alone), each read as f32 when its turn comes, and the compressed model built over the dense tensors
//! as stored.

use crate::compression::policy::MatrixInfo;
use crate::model::checkpoint::{embedding_name, Checkpoint};
use crate::model::config::GptNeoConfig;
use crate::model::gpt_neo::{Block, GptNeo};
use crate::model::linear::LinearWeight;
use crate::model::weights::{CheckpointWeights, Overlay};
use crate::Result;
use std::collections::HashMap;

/// The weight matrices the compressor considers, from config.json and the checkpoint's table alone (no weights are
/// read): every linear layer of every block (q, k, v, out_proj, c_fc, c_proj), then the head.
pub fn considered_matrices(cfg: &GptNeoConfig, ckpt: &Checkpoint) -> Result<Vec<MatrixInfo>> {
    let p = crate::model::weights::tensor_prefix(&CheckpointWeights {
        ckpt,
        precision: crate::model::weights::Precision::AsStored,
    })?;
    let h = cfg.hidden_size;
    let mut mats = Vec::new();
    let elem = |name: &str| {
        ckpt.info(name).map_or((4, "F32".to_string()), |i| (i.dtype.bitsize() / 8, format!("{:?}", i.dtype)))
    };
    for i in 0..cfg.num_layers {
        for slot in Block::linear_slots(cfg, &format!("{p}h.{i}")) {
            let (name, out, inp) = (format!("{}.weight", slot.prefix), slot.out, slot.inp);
            let (stored_elem_bytes, stored_dtype) = elem(&name);
            mats.push(MatrixInfo { name, out, inp, stored_elem_bytes, stored_dtype, tied: false });
        }
    }
    let tied = !ckpt.contains("lm_head.weight");
    let head_src = if tied { embedding_name(ckpt) } else { "lm_head.weight".to_string() };
    let (stored_elem_bytes, stored_dtype) = elem(&head_src);
    mats.push(MatrixInfo {
        name: "lm_head.weight".into(),
        out: cfg.vocab_size,
        inp: h,
        stored_elem_bytes,
        stored_dtype,
        tied,
    });
    Ok(mats)
}

/// The compressed model: the checkpoint's dense tensors as stored, the compressed layers as factors.
pub fn build_compressed(
    cfg: &GptNeoConfig,
    ckpt: &Checkpoint,
    replaced: &HashMap<String, LinearWeight>,
) -> Result<GptNeo> {
    GptNeo::load(
        cfg,
        &Overlay { base: CheckpointWeights { ckpt, precision: crate::model::weights::Precision::AsStored }, replaced },
    )
}

/// Read a weight from the checkpoint as f32 (the tied head reads the token embedding).
pub fn reader(ckpt: &Checkpoint) -> impl Fn(&str) -> Result<Vec<f32>> + '_ {
    move |name: &str| {
        let actual =
            if name == "lm_head.weight" && !ckpt.contains(name) { embedding_name(ckpt) } else { name.to_string() };
        ckpt.read(&actual)?.to_f32_vec()
    }
}
