//! TensorBoard event files, `kiln plot` images, and the profiler's trace.

use crate::{TempDir, CPU};
use kiln::io::tensorboard::{event_files, frame_record, histogram, read_scalars, EventWriter};
use kiln::nn::Module;
use kiln::Error;

#[test]
fn event_files_read_back_and_checksums_are_real() {
    let d = TempDir::new("tb");
    let mut w = EventWriter::create(&d.0).unwrap();
    for s in 0..5 {
        w.add_scalar("loss", 1.0 / (s + 1) as f64, s).unwrap();
    }
    w.add_histogram("w", &[0.5, 1.0, 1.5, 2.0], 3, 5).unwrap();
    w.add_text("note", "hello", 0).unwrap();
    w.flush().unwrap();
    let files = event_files(&d.0).unwrap();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let scalars = read_scalars(&files[0]).unwrap();
    let want: Vec<(String, i64, f64)> =
        (0..5).map(|s| ("loss".to_string(), s, (1.0 / (s + 1) as f64) as f32 as f64)).collect();
    assert_eq!(scalars, want);
    // Flip one payload byte: the reader names the file and the record's offset.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let first = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 16;
    bytes[first + 14] ^= 1;
    std::fs::write(&files[0], &bytes).unwrap();
    let e = read_scalars(&files[0]).unwrap_err();
    assert!(
        matches!(&e, Error::Format { msg, .. } if msg.contains(&format!("offset {first}")) && msg.contains("CRC")),
        "{e}"
    );
}

#[test]
fn record_framing_matches_the_tfrecord_spec() {
    // Known answer: CRC-32C("") = 0, masked = 0xA282EAD8; an empty payload's record is
    // len (8 zero bytes), masked crc of those 8 bytes, nothing, masked crc of "".
    let mut out = Vec::new();
    frame_record(&mut out, b"");
    assert_eq!(out.len(), 16);
    assert_eq!(&out[12..16], &0xA282_EAD8u32.to_le_bytes());
    // The length field's CRC, from the bitwise definition of CRC-32C (not the crate), masked
    // by hand as TFRecord does.
    let c: u32 = 0x8C28_B28A;
    let masked = c.rotate_right(15).wrapping_add(0xA282_EAD8);
    assert_eq!(crc32c_of_zero8(), c);
    assert_eq!(&out[8..12], &masked.to_le_bytes());
}

/// CRC-32C of eight zero bytes, by the bitwise definition (reflected polynomial 0x82F63B78).
fn crc32c_of_zero8() -> u32 {
    let mut crc = !0u32;
    for _ in 0..8 {
        crc ^= 0;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn histogram_buckets_count_every_value_once() {
    let h = histogram(&[0.0, 0.1, 0.5, 0.9, 1.0, f64::NAN], 2);
    assert_eq!((h.min, h.max, h.num), (0.0, 1.0, 5.0));
    assert_eq!(h.bucket_limit, vec![0.5, 1.0]);
    assert_eq!(h.bucket, vec![3.0, 2.0], "(-inf, 0.5] holds 0, 0.1, 0.5");
    assert!((h.sum - 2.5).abs() < 1e-12 && (h.sum_squares - (0.01 + 0.25 + 0.81 + 1.0)).abs() < 1e-12);
}

#[test]
fn plot_writes_png_and_svg() {
    let d = TempDir::new("plot");
    let mut w = EventWriter::create(&d.0).unwrap();
    for s in 0..50 {
        w.add_scalar("train/loss", 2.0 / (1.0 + s as f64), s).unwrap();
        w.add_scalar("epoch/test_accuracy", 0.5 + s as f64 / 100.0, s).unwrap();
    }
    drop(w);
    let series = kiln::plot::load_runs(std::slice::from_ref(&d.0)).unwrap();
    assert_eq!(series.len(), 2);
    let png = d.0.join("p.png");
    kiln::plot::plot(&series, &png, (640, 300)).unwrap();
    let dec = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (640, 300));
    let px = &buf[..info.buffer_size()];
    let non_white = px.chunks(3).filter(|p| p.iter().any(|&c| c < 200)).count();
    assert!(non_white > 2000, "the curves, axes and text draw something ({non_white} dark pixels)");
    let svg = d.0.join("p.svg");
    kiln::plot::plot(&series, &svg, (640, 300)).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(doc.descendants().filter(|n| n.tag_name().name() == "polyline").count() >= 2);
    assert!(matches!(kiln::plot::load_runs(&[d.0.join("nothing")]), Err(Error::Io { .. })));
}

#[test]
fn profiler_trace_names_forward_and_backward_ops() {
    let model = kiln::train::models::mlp(CPU).unwrap();
    let x = crate::randn(&[4, 1, 28, 28], 3);
    let y = kiln::Tensor::from_vec(vec![1i64, 2, 3, 4], [4], CPU).unwrap();
    kiln::profile::start();
    let loss = model.forward(&x).unwrap().cross_entropy(&y, 0.0).unwrap();
    loss.backward().unwrap();
    let p = kiln::profile::stop();
    let trace: serde_json::Value = serde_json::from_str(&serde_json::to_string(&p.chrome_trace()).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let named = |name: &str, cat: &str| events.iter().any(|e| e["name"] == name && e["cat"] == cat && e["ph"] == "X");
    for op in ["matmul", "add", "relu", "cross_entropy"] {
        assert!(named(op, "forward"), "forward {op} missing");
    }
    assert!(named("matmul", "backward"), "backward matmul missing");
    assert!(events.iter().any(|e| e["args"]["backward_of"] == "relu"), "relu's backward is attributed");
    assert!(p.table(5).contains("matmul"));
    assert!(p.peak_bytes > 0);
}
