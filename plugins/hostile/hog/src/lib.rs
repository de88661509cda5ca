//! Hostile test filter: `keep` allocates 1 MiB chunks, writes to each and keeps them all,
//! forever. The broker's memory cap must stop it: the failed `memory.grow` ends in an
//! allocation failure, which traps. `init` succeeds and allocates nothing.

use quiver_plugin::{Filter, Message, Params};

const CHUNK: usize = 1 << 20;

struct Hog {
    chunks: Vec<Vec<u8>>,
}

impl Filter for Hog {
    fn init(_params: Params) -> Result<Self, String> {
        Ok(Hog { chunks: Vec::new() })
    }

    fn keep(&mut self, _msg: &Message<'_>) -> bool {
        loop {
            let mut chunk = vec![0u8; CHUNK];
            // Touch every page so the memory is really used, not just reserved.
            for page in chunk.chunks_mut(4096) {
                page[0] = 1;
            }
            self.chunks.push(std::hint::black_box(chunk));
        }
    }
}

quiver_plugin::filter!(Hog);
