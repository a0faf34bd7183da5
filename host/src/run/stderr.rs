//! A guest's standard error: kept for error messages, never full.
//!
//! wasmtime-wasi's `MemoryOutputPipe` refuses writes once its capacity is reached, so a guest
//! that logged more than that to stderr saw its writes fail (and a Rust plugin's `eprintln!`
//! then panics). This pipe keeps only the last [`KEPT`] bytes, where a crash's account is,
//! and accepts every write.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much of the end of a guest's standard error is kept.
pub const KEPT: usize = 64 * 1024;

/// The tail of what a guest wrote to standard error. Clones share the buffer.
#[derive(Clone, Default)]
pub struct TailPipe {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl TailPipe {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(bytes);
        if buf.len() > 2 * KEPT {
            let cut = buf.len() - KEPT;
            buf.drain(..cut);
        }
    }

    /// The last [`KEPT`] bytes written.
    pub fn contents(&self) -> Vec<u8> {
        let buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        buf[buf.len().saturating_sub(KEPT)..].to_vec()
    }
}

impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(1 << 20)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_and_never_refuses_a_write() {
        let mut p = TailPipe::default();
        for i in 0..10_000u32 {
            let line = format!("line {i}\n");
            OutputStream::write(&mut p, Bytes::from(line)).unwrap();
        }
        let kept = p.contents();
        assert!(kept.len() <= KEPT);
        assert!(String::from_utf8_lossy(&kept).ends_with("line 9999\n"));
        assert!(p.check_write().unwrap() > 0);
    }
}
