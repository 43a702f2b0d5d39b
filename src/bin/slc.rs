//! `slc`: the command line of semantic-llm-compressor, on the same core as the page.
#[cfg(not(target_arch = "wasm32"))]
mod cli;

/// Counts live heap bytes, so `slc eval` reports measured resident memory.
#[cfg(not(target_arch = "wasm32"))]
#[global_allocator]
static ALLOC: semantic_llm_compressor::alloc::CountingAlloc = semantic_llm_compressor::alloc::CountingAlloc;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    match cli::run() {
        Ok(()) => {}
        // `slc inspect DIR | head` closes the pipe early: not an error.
        Err(semantic_llm_compressor::Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}
