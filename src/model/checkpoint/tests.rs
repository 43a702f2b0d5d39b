//! Files read by range, damaged headers refused, shards joined.

use super::*;
use ::safetensors::tensor::Dtype;

fn file_with(tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
    let views: Vec<(String, ::safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), ::safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    ::safetensors::serialize(views, None).unwrap()
}

#[test]
fn reads_tensors_by_range_and_converts_halves() {
    let h: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let b: Vec<u8> = [0.25f32].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let f: Vec<u8> = [3.0f32, 4.0, 5.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bytes =
        file_with(vec![("a", Dtype::F16, vec![2], h), ("b", Dtype::BF16, vec![1], b), ("c", Dtype::F32, vec![3], f)]);
    let st = SafetensorsFile::open(Box::new(MemSource::new("m.safetensors", bytes))).unwrap();
    assert_eq!(st.read("a").unwrap().to_f32_vec().unwrap(), vec![1.5, -2.0]);
    assert_eq!(st.read("b").unwrap().to_f32_vec().unwrap(), vec![0.25]);
    assert_eq!(st.read("c").unwrap().to_f32_vec().unwrap(), vec![3.0, 4.0, 5.0]);
    assert_eq!(st.read("a").unwrap().to_tensor().unwrap().dtype(), candle_core::DType::F32);
    let e = st.read("zz").unwrap_err().to_string();
    assert!(e.contains("zz") && e.contains("m.safetensors"), "{e}");
}

#[test]
fn rejects_truncated_and_garbage_files() {
    let f: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut bytes = file_with(vec![("c", Dtype::F32, vec![2], f)]);
    bytes.pop();
    let e = SafetensorsFile::open(Box::new(MemSource::new("cut.safetensors", bytes))).err().unwrap().to_string();
    assert!(e.starts_with("cut.safetensors") && e.contains("truncated"), "{e}");
    let e = SafetensorsFile::open(Box::new(MemSource::new("x.safetensors", b"hello world, not a file".to_vec())))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("x.safetensors"), "{e}");
    let e = SafetensorsFile::open(Box::new(MemSource::new("t", vec![1, 2]))).err().unwrap().to_string();
    assert!(e.contains("too short"), "{e}");
}

#[test]
fn shards_join_and_index_is_checked() {
    let one = |n: &str| file_with(vec![(n, Dtype::F32, vec![1], 1f32.to_le_bytes().to_vec())]);
    let open = |f: &str, n: &str| SafetensorsFile::open(Box::new(MemSource::new(f, one(n)))).unwrap();
    let idx = r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    let ck = Checkpoint::new(
        vec![open("model-00001-of-00002.safetensors", "a"), open("model-00002-of-00002.safetensors", "b")],
        Some(idx),
    )
    .unwrap();
    assert_eq!(ck.names().cloned().collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(ck.read("b").unwrap().to_f32_vec().unwrap(), vec![1.0]);
    let e = Checkpoint::new(vec![open("model-00001-of-00002.safetensors", "a")], Some(idx)).err().unwrap().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("not given"), "{e}");
    let e = Checkpoint::new(vec![open("x1", "a"), open("x2", "a")], None).err().unwrap().to_string();
    assert!(e.contains("`a`") && e.contains("both"), "{e}");
}

#[test]
fn header_offsets_are_u64_and_checked_like_the_crate() {
    // a 4.3 GB buffer before the weights: offsets past 4 GiB, as in a 5.3 GB f32 checkpoint
    let big = 4_303_360_000u64;
    let json = format!(
        r#"{{"__metadata__":{{"format":"pt"}},"w":{{"dtype":"F32","shape":[2,3],"data_offsets":[{big},{}]}},"h.0.attn.attention.bias":{{"dtype":"BOOL","shape":[1,1,65600,65600],"data_offsets":[0,{big}]}}}}"#,
        big + 24
    );
    let (h, data) = Header::parse("m.safetensors", json.as_bytes()).unwrap();
    assert_eq!(data, big + 24);
    assert_eq!(h.names().cloned().collect::<Vec<_>>(), vec!["h.0.attn.attention.bias", "w"]);
    assert_eq!(h.info("w").unwrap(), &TensorInfo { dtype: Dtype::F32, shape: vec![2, 3], start: big, end: big + 24 });
    assert_eq!(h.info("h.0.attn.attention.bias").unwrap().numel(), big);
    assert_eq!(h.metadata().unwrap()["format"], "pt");

    let check = |json: &str, needles: &[&str]| {
        let e = Header::parse("m.safetensors", json.as_bytes()).unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "{e} lacks {n}");
        }
    };
    // a gap, an overlap, a range ending before it starts, a size that is not dtype × shape
    check(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, &["`a`", "gap"]);
    check(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        &["`b`", "overlaps"],
    );
    check(
        r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"c":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
        &["`c`"],
    );
    check(r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#, &["`a`", "F16", "6 bytes", "hold 8"]);
    check(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#, &["`a`", "overflows"]);
    check(r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#, &["m.safetensors", "`a`"]);
    check(r#"{"a":{"dtype":"F32","shape":[1]}}"#, &["m.safetensors", "`a`", "data_offsets"]);
    check("[1,2]", &["m.safetensors", "not a JSON object"]);
    let e = Header::parse("m.safetensors", b"{\"a\xff").unwrap_err().to_string();
    assert!(e.contains("m.safetensors") && e.contains("UTF-8"), "{e}");
    // every file the crate accepts reads the same here
    let f: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bytes = file_with(vec![("z", Dtype::F32, vec![2], f.clone()), ("a", Dtype::I8, vec![3], vec![1, 2, 3])]);
    let (_, crate_meta) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafetensorsFile::open(Box::new(MemSource::new("m", bytes.clone()))).unwrap();
    assert_eq!(st.names(), crate_meta.offset_keys());
    for n in st.names() {
        let (ours, theirs) = (st.info(&n).unwrap(), crate_meta.info(&n).unwrap());
        assert_eq!((ours.dtype, &ours.shape), (theirs.dtype, &theirs.shape));
        assert_eq!((ours.start, ours.end), (theirs.data_offsets.0 as u64, theirs.data_offsets.1 as u64));
    }
}
