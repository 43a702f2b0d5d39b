//! GPT-Neo in candle: token + position embeddings, pre-LayerNorm blocks of global or local causal self-attention
//! and an MLP, a final LayerNorm and a (usually tied) head. Matches Hugging Face's `GPTNeoForCausalLM`:
//! attention scores are **not** scaled by 1/√d; a local query at position i sees keys i − window < j ≤ i; masked
//! scores are set to `f32::MIN` before the softmax.
//!
//! [`block`]: one transformer block; [`ends`]: the embeddings and the head; [`model`]: the whole model;
//! [`staged`]: the model run a stage at a time, each stage's weights read when it runs.

mod block;
mod ends;
mod model;
mod staged;

// for the GPU kernels' tests, which run natively only
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) use block::LayerNorm;
pub use block::{Block, LinearSlot};
pub use ends::{Embeddings, Head};
pub use model::{GptNeo, KvCache};
pub use staged::{Stage, StagedRun};
