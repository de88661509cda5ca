//! Publish streams: pipelined PUB, MPUB and DPUB, each answered in order by PUB-OK or ERROR
//! carrying the request's sequence number.
//!
//! The stream runs two halves at once. The reading half decodes each request and appends it
//! to its topic's log at once, in arrival order, then queues its confirmation. The writing
//! half awaits the confirmations in order and writes the replies, one write per batch. So a
//! client that pipelines has many publishes waiting on the same fsync (group commit under
//! `fsync = "always"`), and one slow fsync never stops the stream from reading.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn::SendStream;
use tokio::sync::mpsc;

use super::{broker_error, read_error, Caller};
use crate::broker::{Broker, BrokerError, Principal, Published};
use crate::protocol::{Command, ErrorCode, RawFrame, Reply, WireError};
use crate::transport::FrameReader;

/// Replies buffered before they are written even if more are ready.
const FLUSH_AT: usize = 16 * 1024;
/// Requests appended but not yet answered, per stream. When this many wait on their
/// confirmations, the stream stops reading: back-pressure instead of unbounded memory.
const MAX_UNANSWERED: usize = 4096;

/// What the writing half answers a request with.
enum Answer {
    /// Appended: PUB-OK once durable, or ERROR if that failed.
    Confirm { seq: u64, published: Published },
    /// Answered already (an error).
    Reply(Reply),
}

pub(super) async fn run(
    first: Command,
    reader: FrameReader,
    send: &mut SendStream,
    broker: &Broker,
    caller: &Caller,
) -> Result<(), WireError> {
    let (tx, rx) = mpsc::channel(MAX_UNANSWERED);
    let read = pin!(read_half(first, reader, broker, caller, tx));
    let mut write = pin!(write_half(rx, send));
    tokio::select! {
        // The reading half ended (cleanly or with a fatal error): answer everything it
        // appended first, so that no confirmation is lost, then report how it ended.
        result = read => {
            write.await?;
            result
        }
        // The writing half only ends first when the stream can't be written to.
        result = &mut write => result,
    }
}

async fn read_half(
    first: Command,
    mut reader: FrameReader,
    broker: &Broker,
    caller: &Caller,
    tx: mpsc::Sender<Answer>,
) -> Result<(), WireError> {
    let first_seq = first.seq();
    let mut who = caller.principal().await.map_err(|mut e| {
        e.seq = first_seq;
        e
    })?;
    handle(first, broker, &who, &tx).await?;
    loop {
        let read = tokio::select! {
            _ = broker.shutting_down() => {
                return Err(WireError::new(ErrorCode::ShuttingDown, 0, "the broker is shutting down"));
            }
            read = reader.next() => read,
        };
        // An auth server's answer holds for its TTL; then the secret is checked again, and a
        // failure answers the request that found it.
        if who.expires().is_some_and(|at| at <= Instant::now()) {
            let seq = read
                .as_ref()
                .ok()
                .and_then(|r| r.as_ref())
                .map_or(0, |raw| raw.publish_seq());
            who = caller.principal().await.map_err(|mut e| {
                e.seq = seq;
                e
            })?;
        }
        match read {
            Ok(Some(raw)) => handle_raw(raw, broker, &who, &tx).await?,
            Ok(None) => return Ok(()),
            Err(e) => return Err(read_error(&e)),
        }
    }
}

async fn handle_raw(
    raw: RawFrame,
    broker: &Broker,
    who: &Principal,
    tx: &mpsc::Sender<Answer>,
) -> Result<(), WireError> {
    let seq = raw.publish_seq();
    match Command::decode(raw) {
        Ok(cmd) => handle(cmd, broker, who, tx).await,
        Err(e) => {
            let e = e.to_wire(seq);
            if e.fatal {
                return Err(e);
            }
            queue(tx, Answer::Reply(Reply::Error(e))).await
        }
    }
}

async fn handle(
    cmd: Command,
    broker: &Broker,
    who: &Principal,
    tx: &mpsc::Sender<Answer>,
) -> Result<(), WireError> {
    let seq = cmd.seq();
    let appended = match cmd {
        Command::Pub { topic, message, .. } => {
            broker
                .append(who, &topic, vec![message], Duration::ZERO)
                .await
        }
        Command::Mpub {
            topic, messages, ..
        } => broker.append(who, &topic, messages, Duration::ZERO).await,
        Command::Dpub {
            topic,
            delay,
            message,
            ..
        } => broker.append(who, &topic, vec![message], delay).await,
        Command::Nop => return Ok(()),
        other => {
            let e = WireError::new(
                ErrorCode::Invalid,
                seq,
                format!("{other:?} is not valid on a publish stream"),
            );
            return queue(tx, Answer::Reply(Reply::Error(e))).await;
        }
    };
    let answer = match appended {
        Ok(published) => Answer::Confirm { seq, published },
        Err(e) => Answer::Reply(Reply::Error(refusal(&e, seq)?)),
    };
    queue(tx, answer).await
}

/// The error frame for a refused publish, or the error that ends the stream.
fn refusal(e: &BrokerError, seq: u64) -> Result<WireError, WireError> {
    let e = broker_error(e, seq);
    if e.fatal {
        return Err(e);
    }
    Ok(e)
}

async fn queue(tx: &mpsc::Sender<Answer>, answer: Answer) -> Result<(), WireError> {
    // The writing half is gone only when the stream can't be written to; it reports why.
    tx.send(answer)
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, 0, "stream closed").fatal())
}

async fn write_half(
    mut rx: mpsc::Receiver<Answer>,
    send: &mut SendStream,
) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    while let Some(answer) = rx.recv().await {
        answer_one(answer, send, &mut out).await?;
        // Everything queued meanwhile, then one write.
        while let Ok(answer) = rx.try_recv() {
            answer_one(answer, send, &mut out).await?;
            if out.len() >= FLUSH_AT {
                flush(send, &mut out).await?;
            }
        }
        flush(send, &mut out).await?;
    }
    Ok(())
}

/// Encodes the reply to one request. If its confirmation isn't ready, the replies encoded
/// so far are written before waiting for it.
async fn answer_one(
    answer: Answer,
    send: &mut SendStream,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let (seq, mut published) = match answer {
        Answer::Reply(reply) => {
            reply.encode(out);
            return Ok(());
        }
        Answer::Confirm { seq, published } => (seq, published),
    };
    let duplicates = published.take_duplicates();
    let mut confirmed = pin!(published.confirmed());
    let polled = confirmed
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    let result = match polled {
        Poll::Ready(result) => result,
        Poll::Pending => {
            flush(send, out).await?;
            confirmed.await
        }
    };
    match result {
        Ok(_) => Reply::PubOk { seq, duplicates }.encode(out),
        Err(e) => Reply::Error(refusal(&e, seq)?).encode(out),
    }
    Ok(())
}

async fn flush(send: &mut SendStream, out: &mut BytesMut) -> Result<(), WireError> {
    if out.is_empty() {
        return Ok(());
    }
    let result = send.write_all(out).await;
    out.clear();
    result.map_err(|e| WireError::new(ErrorCode::Internal, 0, e.to_string()).fatal())
}
