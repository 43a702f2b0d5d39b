//! GPT-Neo's `config.json`, as Hugging Face writes it.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which attention a block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// Every earlier position.
    Global,
    /// Only the last `window_size` positions (query i sees keys i − window < j ≤ i).
    Local,
}

/// The keys of a GPT-Neo `config.json` that the model needs. Unknown keys are ignored.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct GptNeoConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// `null` or absent means 4 · hidden_size.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_window")]
    pub window_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// `[[["global", "local"], 12]]`: a pattern and how many times it repeats.
    #[serde(default)]
    pub attention_types: Option<Vec<(Vec<String>, usize)>>,
    /// The expanded per-layer list, written by newer transformers; used when `attention_types` is absent.
    #[serde(default)]
    pub attention_layers: Option<Vec<String>>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_max_positions() -> usize {
    2048
}
fn default_window() -> usize {
    256
}
fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}

/// The last JSON key (`"name":`) written before `line`:`column` (1-based, as serde_json reports), if any.
fn key_before(text: &str, line: usize, column: usize) -> Option<String> {
    let start: usize = text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum();
    let upto = text.get(..(start + column).min(text.len()))?;
    let colon = upto.rfind(':')?;
    let before = upto[..colon].trim_end().strip_suffix('"')?;
    let open = before.rfind('"')?;
    Some(before[open + 1..].to_string()).filter(|k| !k.is_empty() && k.len() < 80)
}

/// Well-known architectures by `model_type`, as people call them.
const ARCHITECTURES: [(&str, &str); 12] = [
    ("gpt2", "GPT-2"),
    ("gptj", "GPT-J"),
    ("gpt_neox", "GPT-NeoX"),
    ("gpt_bigcode", "GPT-BigCode"),
    ("llama", "Llama"),
    ("mistral", "Mistral"),
    ("opt", "OPT"),
    ("bloom", "BLOOM"),
    ("falcon", "Falcon"),
    ("phi", "Phi"),
    ("qwen2", "Qwen2"),
    ("bert", "BERT"),
];

/// An error naming the architecture when `config.json` (as JSON) describes a model other than GPT-Neo: its
/// `model_type` is another, or its `architectures` list no GPT-Neo class.
fn other_architecture(v: &serde_json::Value) -> Result<()> {
    let model_type = v.get("model_type").and_then(|t| t.as_str());
    let classes: Vec<&str> = v
        .get("architectures")
        .and_then(|a| a.as_array())
        .map_or(vec![], |a| a.iter().filter_map(|c| c.as_str()).collect());
    let neo_class = classes.iter().any(|c| c.starts_with("GPTNeo") && !c.starts_with("GPTNeoX"));
    // model_type decides; without one, the classes do (and a config naming neither is left to the parse to refuse)
    if model_type == Some("gpt_neo") || (model_type.is_none() && (classes.is_empty() || neo_class)) {
        return Ok(());
    }
    let Some(t) = model_type.filter(|t| *t != "gpt_neo").or(classes.first().copied()) else { return Ok(()) };
    let name = ARCHITECTURES.iter().find(|(k, _)| *k == t).map_or(t, |(_, n)| *n);
    let what = match (model_type, classes.first()) {
        (Some(m), Some(c)) => format!("model_type is \"{m}\" ({c})"),
        (Some(m), None) => format!("model_type is \"{m}\""),
        (None, Some(c)) => format!("its architecture is {c}"),
        (None, None) => String::new(),
    };
    Err(Error::Config(format!(
        "this is a {name} model: {what}; this program reads GPT-Neo models (model_type \"gpt_neo\", \
         GPTNeoForCausalLM)"
    )))
}

/// The most layers a config may declare (a bound, so that a damaged count cannot ask for any amount of memory).
pub const MAX_LAYERS: usize = 1024;

impl GptNeoConfig {
    /// Parse and check a `config.json`. Another architecture's config is refused by name first (a GPT-2 config has
    /// no `num_layers`, and a parse error would say only that).
    pub fn from_json(text: &str) -> Result<Self> {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            other_architecture(&v)?;
        }
        let cfg: GptNeoConfig = serde_json::from_str(text).map_err(|e| {
            // serde names a missing key itself; a bad value it places by line and column: name its key too
            match key_before(text, e.line(), e.column()) {
                Some(key)
                    if e.classify() == serde_json::error::Category::Data && !e.to_string().contains("missing") =>
                {
                    Error::Config(format!("the value of {key} is not valid ({e})"))
                }
                _ => Error::Config(format!("not a GPT-Neo config ({e})")),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        match self.model_type.as_deref() {
            Some("gpt_neo") => {}
            Some(other) => {
                return Err(Error::Config(format!("model_type is \"{other}\"; only \"gpt_neo\" models are supported")))
            }
            None => return Err(Error::Config("the key model_type is missing (expected \"gpt_neo\")".into())),
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("window_size", self.window_size),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("{key} is 0")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(Error::Config(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            )));
        }
        if !matches!(self.activation_function.as_str(), "gelu_new" | "gelu" | "relu" | "silu" | "gelu_pytorch_tanh") {
            return Err(Error::Config(format!(
                "activation_function \"{}\" is not supported (gelu_new, gelu, gelu_pytorch_tanh, relu, silu are)",
                self.activation_function
            )));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon >= 0.0) {
            return Err(Error::Config("layer_norm_epsilon is not a non-negative number".into()));
        }
        self.attention_kinds().map(|_| ())
    }

    /// The attention kind of every layer, from `attention_types` (or `attention_layers`).
    pub fn attention_kinds(&self) -> Result<Vec<AttentionKind>> {
        if self.num_layers > MAX_LAYERS {
            return Err(Error::Config(format!(
                "num_layers is {}; this program reads at most {MAX_LAYERS} (the largest GPT-Neo has 32)",
                self.num_layers
            )));
        }
        let names: Vec<String> = match (&self.attention_types, &self.attention_layers) {
            (Some(types), _) => {
                // counted before it is expanded: a repeat count can be any number
                let n = types
                    .iter()
                    .try_fold(0usize, |n, (pattern, repeat)| pattern.len().checked_mul(*repeat)?.checked_add(n));
                if n != Some(self.num_layers) {
                    return Err(Error::Config(format!(
                        "attention_types expands to {} layers but num_layers is {}",
                        n.map_or("more than can be counted".to_string(), |n| n.to_string()),
                        self.num_layers
                    )));
                }
                let mut out = Vec::with_capacity(self.num_layers);
                for (pattern, repeat) in types {
                    for _ in 0..*repeat {
                        out.extend(pattern.iter().cloned());
                    }
                }
                out
            }
            (None, Some(layers)) => layers.clone(),
            (None, None) => return Err(Error::Config("neither attention_types nor attention_layers is given".into())),
        };
        if names.len() != self.num_layers {
            return Err(Error::Config(format!(
                "attention_types expands to {} layers but num_layers is {}",
                names.len(),
                self.num_layers
            )));
        }
        names
            .iter()
            .map(|n| match n.as_str() {
                "global" => Ok(AttentionKind::Global),
                "local" => Ok(AttentionKind::Local),
                other => Err(Error::Config(format!("attention type \"{other}\" is neither global nor local"))),
            })
            .collect()
    }

    pub fn intermediate_size(&self) -> usize {
        self.intermediate_size.unwrap_or(4 * self.hidden_size)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The dtype the checkpoint says its weights are in (`dtype`, or the older `torch_dtype`).
    pub fn declared_dtype(&self) -> Option<&str> {
        self.dtype.as_deref().or(self.torch_dtype.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"model_type":"gpt_neo","vocab_size":10,"hidden_size":8,"num_layers":4,"num_heads":2,
        "attention_types":[[["global","local"],2]],"intermediate_size":null,"window_size":4,"torch_dtype":"float16"}"#;

    #[test]
    fn expands_attention_types_and_defaults() {
        let c = GptNeoConfig::from_json(BASE).unwrap();
        use AttentionKind::*;
        assert_eq!(c.attention_kinds().unwrap(), vec![Global, Local, Global, Local]);
        assert_eq!(c.intermediate_size(), 32);
        assert_eq!(c.declared_dtype(), Some("float16"));
        assert_eq!(c.layer_norm_epsilon, 1e-5);
    }

    #[test]
    fn rejects_other_models_and_bad_layer_counts() {
        let e = GptNeoConfig::from_json(&BASE.replace("gpt_neo", "gpt2")).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("gpt2"), "{e}");
        let e = GptNeoConfig::from_json(&BASE.replace("],2]]", "],3]]")).unwrap_err().to_string();
        assert!(e.contains("num_layers"), "{e}");
        let e = GptNeoConfig::from_json("{").unwrap_err().to_string();
        assert!(e.starts_with("config.json"), "{e}");
    }
}
