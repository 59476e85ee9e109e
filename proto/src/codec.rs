//! The gRPC codec of Strait's services: prost, with smaller per-stream buffers than tonic's.
//!
//! tonic gives every stream an 8 KiB encode buffer and an 8 KiB decode buffer. A controller holds
//! one discovery stream per proxy, so at 10,000 proxies that is 160 MiB of buffers, while a
//! discovery message is a few hundred bytes (an update of a 10-endpoint service is about 1 KiB).
//! Buffers still grow to the largest message when one comes; [`BUFFER_SIZE`] is where they start.
//! The encode buffer also collects the messages that are ready before handing them to HTTP/2, up
//! to [`YIELD_THRESHOLD`], and keeps the capacity it grew to: tonic's 32 KiB let a proxy's first
//! ten answers grow it to 16 KiB for the stream's whole life.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers: one typical message.
pub const BUFFER_SIZE: usize = 1024;

/// How much encoded data a stream collects before handing it to the transport (tonic's default is
/// 32 KiB). A burst of updates to one proxy goes out in chunks of this size: a few messages each,
/// which costs a few more HTTP/2 frames and nothing a proxy notices.
pub const YIELD_THRESHOLD: usize = 4 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; the generated clients and servers use it.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
