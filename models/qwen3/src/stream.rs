//! Incremental detokenization: text out as tokens arrive, never half a character.
//!
//! A byte-level BPE token may end inside a UTF-8 character (an emoji spans several tokens);
//! decoding such a prefix gives U+FFFD. The decoder keeps the tokens since the last clean
//! cut and releases text only when their decoding ends cleanly, as transformers'
//! `TextStreamer` and vLLM's incremental detokenizer do: the new text is the decoding of
//! the pending tokens minus that of the tokens already released, both decoded from the
//! same earlier cut so that decoders which look at neighbouring tokens agree.

use crate::tokenizer::Tokenizer;
use crate::Result;

/// Streams the text of a growing token sequence (special tokens left out).
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Where the text being compared starts (tokens before it are done with).
    prefix: usize,
    /// Tokens up to here have been released as text.
    read: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let done = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], true)?;
        let all = self.tokenizer.decode(&self.ids[self.prefix..], true)?;
        // The text is incomplete while it ends in a replacement character (a token ended
        // inside a character) or has not grown past what was released.
        if all.ends_with('\u{fffd}') || all.len() <= done.len() || !all.is_char_boundary(done.len())
        {
            return Ok(String::new());
        }
        let new = all[done.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(new)
    }

    /// What is still held back (an unfinished character comes out as U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        let done = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], true)?;
        let all = self.tokenizer.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(match all.get(done.len()..) {
            Some(rest) if all.starts_with(&done) => rest.to_string(),
            _ => all,
        })
    }
}
