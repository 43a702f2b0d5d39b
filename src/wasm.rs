//! The WebAssembly boundary: the only module that knows about JavaScript. It owns no logic; it turns `File`s into
//! byte sources, JS values into Rust types and back, and errors into `JsError`s whose message is the sentence the
//! page shows. Everything here runs inside a Web Worker (`FileReaderSync` exists only there).

use crate::bundle::ModelBundle;
use crate::checkpoint::{ByteSource, Checkpoint, SafetensorsFile};
use crate::generate::{Generation, SamplingParams};
use crate::model::GptNeo;
use crate::tokenizer::TextStream;
use crate::{Error, Result};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

fn js_err(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

fn to_js<T: Serialize>(v: &T) -> std::result::Result<JsValue, JsError> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| JsError::new(&e.to_string()))
}

fn from_js<T: serde::de::DeserializeOwned>(v: JsValue, what: &str) -> Result<T> {
    serde_wasm_bindgen::from_value(v).map_err(|e| Error::Policy(format!("{what}: {e}")))
}

/// A `File` (or `Blob`) read in slices with `FileReaderSync`, so only the bytes asked for enter wasm memory.
pub struct BlobSource {
    name: String,
    blob: web_sys::Blob,
    reader: web_sys::FileReaderSync,
}

impl BlobSource {
    pub fn new(name: String, blob: web_sys::Blob) -> Result<Self> {
        let reader = web_sys::FileReaderSync::new()
            .map_err(|_| Error::file(&name, "cannot be read here: FileReaderSync exists only inside a Web Worker"))?;
        Ok(Self { name, blob, reader })
    }

    fn read_all(&self) -> Result<Vec<u8>> {
        self.read_at(0, self.blob.size() as usize)
    }
}

impl ByteSource for BlobSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.blob.size() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset + len as u64;
        if end > self.len() {
            return Err(Error::file(&self.name, format!("read of {len} bytes at {offset} runs past the end ({} bytes)", self.len())));
        }
        let slice = self
            .blob
            .slice_with_f64_and_f64(offset as f64, end as f64)
            .map_err(|_| Error::file(&self.name, "cannot be sliced"))?;
        let buf = self
            .reader
            .read_as_array_buffer(&slice)
            .map_err(|e| Error::file(&self.name, format!("cannot be read ({e:?})")))?;
        let arr = js_sys::Uint8Array::new(&buf);
        if arr.length() as usize != len {
            return Err(Error::file(&self.name, format!("short read: {} of {len} bytes", arr.length())));
        }
        let mut out = vec![0u8; len];
        arr.copy_to(&mut out);
        Ok(out)
    }
}

/// The model files picked out of what the user dropped, by name.
struct FileSet {
    config: Option<BlobSource>,
    tokenizer: Option<BlobSource>,
    index: Option<BlobSource>,
    weights: Vec<BlobSource>,
    ignored: Vec<String>,
}

fn classify(files: &js_sys::Array) -> Result<FileSet> {
    let mut set = FileSet { config: None, tokenizer: None, index: None, weights: Vec::new(), ignored: Vec::new() };
    for f in files.iter() {
        let file: web_sys::File =
            f.dyn_into().map_err(|_| Error::msg("an item given as a model file is not a File"))?;
        let name = file.name();
        let src = BlobSource::new(name.clone(), file.into())?;
        match name.as_str() {
            "config.json" => set.config = Some(src),
            "tokenizer.json" => set.tokenizer = Some(src),
            "model.safetensors.index.json" => set.index = Some(src),
            n if n.ends_with(".safetensors") => set.weights.push(src),
            _ => set.ignored.push(name),
        }
    }
    Ok(set)
}

/// Memory a wasm32 instance can address.
const WASM_LIMIT: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;

fn heap_bytes() -> f64 {
    wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>().buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as f64
}

fn gib(x: f64) -> String {
    format!("{:.2} GiB", x / (1024.0 * 1024.0 * 1024.0))
}

#[derive(Serialize)]
struct OpenReport {
    summary: crate::bundle::BundleSummary,
    missing: Vec<String>,
    ignored: Vec<String>,
}

/// One model session in a worker: the files, the loaded models, a generation in progress.
#[wasm_bindgen]
pub struct Workspace {
    bundle: Option<ModelBundle>,
    original: Option<GptNeo>,
    generations: Vec<(String, Generation, TextStream)>,
}

#[wasm_bindgen]
impl Workspace {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Workspace {
        console_error_panic_hook();
        Workspace { bundle: None, original: None, generations: Vec::new() }
    }

    /// Take the user's files (an array of `File`): config.json, tokenizer.json, *.safetensors and the shard index.
    /// Reads only config, tokenizer and the safetensors headers. Returns what was found and what is missing.
    pub fn open(&mut self, files: js_sys::Array) -> std::result::Result<JsValue, JsError> {
        self.bundle = None;
        self.original = None;
        self.generations.clear();
        let set = classify(&files).map_err(js_err)?;
        let mut missing = Vec::new();
        if set.config.is_none() {
            missing.push("config.json".to_string());
        }
        if set.weights.is_empty() {
            missing.push("model.safetensors (or its shards)".to_string());
        }
        if !missing.is_empty() {
            return Err(js_err(Error::msg(format!("missing {}", missing.join(" and ")))));
        }
        let config = String::from_utf8(set.config.as_ref().map(|c| c.read_all()).transpose().map_err(js_err)?.unwrap_or_default())
            .map_err(|_| js_err(Error::Config("is not UTF-8 text".into())))?;
        let tok = set.tokenizer.as_ref().map(|t| t.read_all()).transpose().map_err(js_err)?;
        if tok.is_none() {
            missing.push("tokenizer.json (needed for text)".to_string());
        }
        let index = set
            .index
            .as_ref()
            .map(|i| i.read_all().map(|b| String::from_utf8_lossy(&b).into_owned()))
            .transpose()
            .map_err(js_err)?;
        let files = set
            .weights
            .into_iter()
            .map(|w| SafetensorsFile::open(Box::new(w)))
            .collect::<Result<Vec<_>>>()
            .map_err(js_err)?;
        let ckpt = Checkpoint::new(files, index.as_deref()).map_err(js_err)?;
        let bundle = ModelBundle::from_parts(&config, tok.as_deref(), ckpt).map_err(js_err)?;
        let summary = bundle.summary().map_err(js_err)?;
        self.bundle = Some(bundle);
        to_js(&OpenReport { summary, missing, ignored: set.ignored })
    }

    /// Load the model's weights (f32, or kept in f16/bf16 when f32 would not fit in wasm memory). Returns
    /// `{bytes, dtype}`.
    pub fn load(&mut self) -> std::result::Result<JsValue, JsError> {
        let b = self.bundle.as_ref().ok_or_else(|| js_err(Error::msg("no model is open")))?;
        let f32_bytes = b.estimate_model_bytes(false) as f64;
        let half_bytes = b.estimate_model_bytes(true) as f64;
        let free = WASM_LIMIT - heap_bytes();
        let keep_half = if f32_bytes < 0.8 * free {
            false
        } else if half_bytes < 0.8 * free {
            true
        } else {
            return Err(js_err(Error::Memory(format!(
                "the model needs {} even with f16 weights kept as stored, and only {} of the 4 GiB wasm memory is free",
                gib(half_bytes),
                gib(free)
            ))));
        };
        let model = b.load_model(keep_half).map_err(js_err)?;
        let bytes = model.weight_bytes();
        self.original = Some(model);
        #[derive(Serialize)]
        struct Loaded {
            bytes: usize,
            keep_half: bool,
        }
        to_js(&Loaded { bytes, keep_half })
    }

    /// Token ids of a text.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, JsError> {
        let b = self.bundle.as_ref().ok_or_else(|| js_err(Error::msg("no model is open")))?;
        b.tokenizer().and_then(|t| t.encode(text)).map_err(js_err)
    }

    /// Start generating from `prompt` with the model called `which` ("original"); `params` as [`SamplingParams`].
    pub fn generate_start(&mut self, which: &str, prompt: &str, params: JsValue) -> std::result::Result<(), JsError> {
        let params: SamplingParams = if params.is_undefined() || params.is_null() {
            SamplingParams::default()
        } else {
            from_js(params, "generation settings").map_err(js_err)?
        };
        let ids = self.encode(prompt)?;
        let model = self.model(which).map_err(js_err)?;
        let g = Generation::new(model, &ids, params).map_err(js_err)?;
        self.generations.retain(|(w, _, _)| w != which);
        self.generations.push((which.to_string(), g, TextStream::default()));
        Ok(())
    }

    /// The next token of the generation `which`: `{id, text, done}`, or `null` when it is finished.
    pub fn generate_next(&mut self, which: &str) -> std::result::Result<JsValue, JsError> {
        let pos = self
            .generations
            .iter()
            .position(|(w, _, _)| w == which)
            .ok_or_else(|| js_err(Error::msg(format!("no generation with the {which} model was started"))))?;
        let model = match which {
            "original" => self.original.as_ref(),
            _ => None,
        }
        .ok_or_else(|| js_err(Error::msg(format!("the {which} model is not loaded"))))?;
        let b = self.bundle.as_ref().ok_or_else(|| js_err(Error::msg("no model is open")))?;
        let tok = b.tokenizer().map_err(js_err)?;
        let (_, g, stream) = &mut self.generations[pos];
        #[derive(Serialize)]
        struct Step {
            id: u32,
            text: String,
            done: bool,
        }
        match g.step(model).map_err(js_err)? {
            Some(id) => {
                let text = stream.push(tok, id).map_err(js_err)?;
                to_js(&Step { id, text, done: g.done })
            }
            None => Ok(JsValue::NULL),
        }
    }

    /// Bytes of wasm linear memory in use by this instance (it only grows).
    pub fn memory_bytes(&self) -> f64 {
        heap_bytes()
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    fn model(&self, which: &str) -> Result<&GptNeo> {
        match which {
            "original" => self.original.as_ref(),
            _ => None,
        }
        .ok_or_else(|| Error::msg(format!("the {which} model is not loaded")))
    }
}

fn console_error_panic_hook() {
    use std::sync::Once;
    static SET: Once = Once::new();
    SET.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&format!("panic: {info}").into());
        }));
    });
}
