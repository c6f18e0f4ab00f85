//! TensorBoard event files, written so TensorBoard's own loader reads them.
//!
//! File: `events.out.tfevents.<unix time>.<host>.<pid>.<n>` in the log directory; a sequence of
//! records, each `u64le length`, `u32le masked CRC-32C of those 8 bytes`, the payload (an
//! `Event` protobuf), `u32le masked CRC-32C of the payload`. The first event carries
//! `file_version = "brain.Event:2"`. Messages are declared here with `prost`, by the field
//! numbers of TensorBoard's event.proto / summary.proto / histogram.proto / tensor.proto.

use crate::{Error, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// tensorboard/compat/proto/event.proto `Event` (the fields Kiln writes).
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5")]
    pub what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// summary.proto `Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// summary.proto `Summary.Value`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    #[prost(oneof = "ValueKind", tags = "2, 5, 8")]
    pub value: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "5")]
    Histo(HistogramProto),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// summary.proto `SummaryMetadata` (plugin_data only).
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// histogram.proto `HistogramProto`: bucket i counts values in (bucket_limit[i-1], bucket_limit[i]].
#[derive(Clone, PartialEq, Message)]
pub struct HistogramProto {
    #[prost(double, tag = "1")]
    pub min: f64,
    #[prost(double, tag = "2")]
    pub max: f64,
    #[prost(double, tag = "3")]
    pub num: f64,
    #[prost(double, tag = "4")]
    pub sum: f64,
    #[prost(double, tag = "5")]
    pub sum_squares: f64,
    #[prost(double, repeated, tag = "6")]
    pub bucket_limit: Vec<f64>,
    #[prost(double, repeated, tag = "7")]
    pub bucket: Vec<f64>,
}

/// tensor.proto `TensorProto`, enough for one string (the text plugin's format).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// DataType enum: DT_STRING = 7.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

/// Appends one framed record to `out`.
pub fn frame_record(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Writes summaries into one event file. Buffered: records reach the file at least every
/// `flush_every` (2 s by default), on [`flush`](Self::flush) and when dropped, so a crash
/// loses at most that window.
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    last_flush: Instant,
    pub flush_every: Duration,
}

impl EventWriter {
    /// Creates `logdir` if needed and a new event file in it.
    pub fn create(logdir: impl AsRef<Path>) -> Result<EventWriter> {
        let dir = logdir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("events.out.tfevents.{:010}.{}.{}.{n}", now() as u64, hostname(), std::process::id());
        let path = dir.join(name);
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter {
            path,
            file: std::io::BufWriter::new(file),
            last_flush: Instant::now(),
            flush_every: Duration::from_secs(2),
        };
        w.write_event(&Event {
            wall_time: now(),
            step: 0,
            what: Some(EventWhat::FileVersion("brain.Event:2".into())),
        })?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_event(&mut self, e: &Event) -> Result<()> {
        let mut rec = Vec::with_capacity(e.encoded_len() + 16);
        frame_record(&mut rec, &e.encode_to_vec());
        self.file.write_all(&rec).map_err(|err| Error::io(&self.path, err))?;
        if self.last_flush.elapsed() >= self.flush_every {
            self.flush()?;
        }
        Ok(())
    }

    fn write_values(&mut self, step: i64, value: Vec<SummaryValue>) -> Result<()> {
        self.write_event(&Event { wall_time: now(), step, what: Some(EventWhat::Summary(Summary { value })) })
    }

    /// A scalar (TensorBoard's Scalars dashboard).
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        self.write_values(
            step,
            vec![SummaryValue { tag: tag.into(), metadata: None, value: Some(ValueKind::SimpleValue(value as f32)) }],
        )
    }

    /// A histogram of `values` (TensorBoard's Histograms and Distributions dashboards),
    /// with `bins` equal-width buckets between min and max.
    pub fn add_histogram(&mut self, tag: &str, values: &[f64], bins: usize, step: i64) -> Result<()> {
        let h = histogram(values, bins.max(1));
        self.write_values(
            step,
            vec![SummaryValue { tag: tag.into(), metadata: None, value: Some(ValueKind::Histo(h)) }],
        )
    }

    /// A text (TensorBoard's Text dashboard; markdown is rendered).
    pub fn add_text(&mut self, tag: &str, text: &str, step: i64) -> Result<()> {
        let meta =
            SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }) };
        let t = TensorProto {
            dtype: 7,
            tensor_shape: Some(TensorShapeProto {}),
            string_val: vec![text.as_bytes().to_vec()],
        };
        self.write_values(
            step,
            vec![SummaryValue { tag: tag.into(), metadata: Some(meta), value: Some(ValueKind::Tensor(t)) }],
        )
    }

    /// Pushes buffered records to the file and to disk.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        self.last_flush = Instant::now();
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.file.flush();
    }
}

/// Equal-width buckets over [min, max]; TensorBoard reads bucket i as (limit[i-1], limit[i]].
pub fn histogram(values: &[f64], bins: usize) -> HistogramProto {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (min, max) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if finite.is_empty() {
        return HistogramProto {
            min: 0.0,
            max: 0.0,
            num: 0.0,
            sum: 0.0,
            sum_squares: 0.0,
            bucket_limit: vec![],
            bucket: vec![],
        };
    }
    let width = if max > min { (max - min) / bins as f64 } else { 1.0 };
    let limits: Vec<f64> = (1..=bins).map(|i| if i == bins { max } else { min + width * i as f64 }).collect();
    let mut counts = vec![0.0; bins];
    for &v in &finite {
        let i = if max > min { (((v - min) / width).ceil() as usize).clamp(1, bins) - 1 } else { 0 };
        counts[i] += 1.0;
    }
    HistogramProto {
        min,
        max,
        num: finite.len() as f64,
        sum: finite.iter().sum(),
        sum_squares: finite.iter().map(|v| v * v).sum(),
        bucket_limit: limits,
        bucket: counts,
    }
}

/// Scalars read back from event files: (tag, step, value) in file order.
pub type Scalars = Vec<(String, i64, f64)>;

/// Reads every scalar of an event file, checking both CRCs of every record; a bad record is
/// an error naming the file and its byte offset.
pub fn read_scalars(path: impl AsRef<Path>) -> Result<Scalars> {
    let path = path.as_ref();
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut off = 0;
    while off < b.len() {
        let bad = |msg: &str| Error::format(path, format!("record at offset {off}: {msg}"));
        if b.len() - off < 12 {
            return Err(bad("truncated header"));
        }
        let len_bytes = &b[off..off + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or([0; 8])) as usize;
        let crc = u32::from_le_bytes(b[off + 8..off + 12].try_into().unwrap_or([0; 4]));
        if crc != masked_crc(len_bytes) {
            return Err(bad("length CRC mismatch"));
        }
        let end = off.checked_add(12 + len + 4).filter(|&e| e <= b.len()).ok_or_else(|| bad("truncated payload"))?;
        let payload = &b[off + 12..off + 12 + len];
        let pcrc = u32::from_le_bytes(b[end - 4..end].try_into().unwrap_or([0; 4]));
        if pcrc != masked_crc(payload) {
            return Err(bad("payload CRC mismatch"));
        }
        let ev = Event::decode(payload).map_err(|e| bad(&format!("not an Event: {e}")))?;
        if let Some(EventWhat::Summary(s)) = ev.what {
            for v in s.value {
                if let Some(ValueKind::SimpleValue(x)) = v.value {
                    out.push((v.tag, ev.step, x as f64));
                }
            }
        }
        off = end;
    }
    Ok(out)
}

/// The event files of a run directory, oldest first.
pub fn event_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("tfevents")))
        .collect();
    files.sort();
    Ok(files)
}
