//! A WebSocket opened by hand over TCP, for what a WebSocket library will not do: send
//! frames it refuses to send (invalid UTF-8, over the size limit), read exactly as slowly
//! as a test wants, and see exactly how the server ends the socket.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::client::token;

/// A WebSocket opened by hand over TCP, to send frames a WebSocket library will not send
/// (invalid UTF-8, over the size limit) and to see exactly how the server ends it.
pub struct RawSocket {
    stream: TcpStream,
    read: Vec<u8>,
}

/// How a socket ended.
#[derive(Debug, PartialEq)]
pub enum Ending {
    /// A close frame with this code.
    Close(Option<u16>),
    /// The TCP connection closed (or was reset) without a close frame.
    Dropped,
}

pub const TEXT: u8 = 1;
pub const CONTINUATION: u8 = 0;

impl RawSocket {
    /// Opens `user`'s socket on `addr`; `receive_buffer` shrinks the TCP receive buffer.
    pub async fn open(addr: SocketAddr, user: &str, receive_buffer: Option<u32>) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let request = format!(
            "GET /v1/ws?token={}&device=raw HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            token(user)
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Self {
            stream,
            read: Vec::new(),
        };
        let end = loop {
            if let Some(end) = raw.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(
                raw.fill(raw.read.len() + 1).await,
                "closed in the handshake"
            );
        };
        let head = String::from_utf8_lossy(&raw.read[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.read.drain(..end + 4);
        let (opcode, hello) = raw.next_frame().await.expect("a hello frame");
        let hello: serde_json::Value = serde_json::from_slice(&hello).expect("JSON");
        assert_eq!((opcode, &hello["type"]), (TEXT, &"hello".into()), "{hello}");
        raw
    }

    /// Sends one masked frame; write errors are returned (the server may have hung up).
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await
    }

    /// Reads until `len` bytes are buffered; false when the connection ended first.
    pub async fn fill(&mut self, len: usize) -> bool {
        while self.read.len() < len {
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.read.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// The next frame from the server (opcode, payload), `None` when the connection ended.
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2).await {
            return None;
        }
        let (len, header) = match self.read[1] & 0x7f {
            126 => {
                if !self.fill(4).await {
                    return None;
                }
                (
                    usize::from(u16::from_be_bytes([self.read[2], self.read[3]])),
                    4,
                )
            }
            127 => {
                if !self.fill(10).await {
                    return None;
                }
                let bytes: [u8; 8] = self.read[2..10].try_into().unwrap();
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        if !self.fill(header + len).await {
            return None;
        }
        let opcode = self.read[0] & 0x0f;
        let payload = self.read[header..header + len].to_vec();
        self.read.drain(..header + len);
        Some((opcode, payload))
    }

    /// Reads (and counts the text frames) until the server ends the socket, for at most
    /// `within`.
    pub async fn ending(&mut self, within: Duration) -> (Ending, usize) {
        let mut texts = 0;
        let read = async {
            loop {
                match self.next_frame().await {
                    None => return Ending::Dropped,
                    Some((8, payload)) => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        return Ending::Close(code);
                    }
                    Some((TEXT, _)) => texts += 1,
                    Some(_) => {}
                }
            }
        };
        let ending = tokio::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("the socket was still open after {within:?}"));
        (ending, texts)
    }
}

/// What a steadily slow reader saw: the inbox sequences of the items it got, in the order
/// it got them, and how the socket ended (`None`: still open when it stopped reading).
#[derive(Debug)]
pub struct SlowRead {
    pub seqs: Vec<u64>,
    pub ending: Option<Ending>,
}

impl RawSocket {
    /// Reads at most `chunk` bytes every `pause` (a phone on a bad link) until `stop`,
    /// collecting the `seq` of every item frame.
    pub async fn read_slowly(
        &mut self,
        chunk: usize,
        pause: Duration,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> SlowRead {
        let mut seqs = Vec::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return SlowRead { seqs, ending: None },
                () = tokio::time::sleep(pause) => {}
            }
            let mut buf = vec![0u8; chunk];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    return SlowRead {
                        seqs,
                        ending: Some(Ending::Dropped),
                    };
                }
                Ok(n) => self.read.extend_from_slice(&buf[..n]),
            }
            while let Some((opcode, payload)) = self.buffered_frame() {
                match opcode {
                    8 => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        return SlowRead {
                            seqs,
                            ending: Some(Ending::Close(code)),
                        };
                    }
                    TEXT => {
                        let frame: serde_json::Value =
                            serde_json::from_slice(&payload).unwrap_or_default();
                        if let Some(seq) = frame["seq"].as_u64() {
                            seqs.push(seq);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The next whole frame already read, without reading more.
    fn buffered_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let read = &self.read;
        if read.len() < 2 {
            return None;
        }
        let (len, header) = match read[1] & 0x7f {
            126 if read.len() >= 4 => (usize::from(u16::from_be_bytes([read[2], read[3]])), 4),
            127 if read.len() >= 10 => {
                let bytes: [u8; 8] = read[2..10].try_into().ok()?;
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if read.len() < header + len {
            return None;
        }
        let opcode = read[0] & 0x0f;
        let payload = read[header..header + len].to_vec();
        self.read.drain(..header + len);
        Some((opcode, payload))
    }
}
