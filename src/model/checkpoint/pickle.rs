//! The pickle of a PyTorch state dict read as data, never run. `torch.save` pickles a mapping of names to tensors,
//! each tensor rebuilt by `torch._utils._rebuild_tensor_v2` (or `_rebuild_parameter` around it) from a storage that
//! lives in its own entry of the archive (a persistent id). This interpreter knows the pickle opcodes a state dict
//! uses and accepts only the globals such a dict needs (the rebuild functions, the storage types,
//! `collections.OrderedDict`); any other global, say `os.system` or `builtins.eval`, is refused with a sentence naming
//! it the moment it is read, before anything is built. Nothing here calls anything: a "call" of an accepted global
//! makes a plain value (a dict, a tensor's description).

use crate::{Error, Result};
use safetensors::Dtype;

/// Where one tensor's data lies: in storage `key` (the archive's entry `data/{key}`), as `dtype`, from element
/// `offset` of the storage, with its shape and strides (in elements).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub key: String,
    pub dtype: Dtype,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The globals a state dict uses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Dtype),
}

/// The storage types by name, and the dtype of their elements.
const STORAGES: [(&str, Dtype); 11] = [
    ("FloatStorage", Dtype::F32),
    ("HalfStorage", Dtype::F16),
    ("BFloat16Storage", Dtype::BF16),
    ("DoubleStorage", Dtype::F64),
    ("LongStorage", Dtype::I64),
    ("IntStorage", Dtype::I32),
    ("ShortStorage", Dtype::I16),
    ("CharStorage", Dtype::I8),
    ("ByteStorage", Dtype::U8),
    ("BoolStorage", Dtype::BOOL),
    ("UntypedStorage", Dtype::U8),
];

fn global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", s) => STORAGES.iter().find(|(n, _)| *n == s).map(|&(_, d)| Global::Storage(d)),
        _ => None,
    }
}

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage { key: String, dtype: Dtype },
    Tensor(TensorRef),
    Mark,
}

/// The most values the stack and the memo may hold (a bound against a damaged or hostile pickle).
const MAX_VALUES: usize = 1 << 22;

struct Reader<'a> {
    file: &'a str,
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: impl std::fmt::Display) -> Error {
        Error::file(self.file, format!("is not a readable PyTorch state dict: its pickle {what}"))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.p.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| self.bad("is truncated"))?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.b[self.p..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or_else(|| self.bad("has a GLOBAL without its newline"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.bad("has a GLOBAL that is not text"))?;
        self.p += n + 1;
        Ok(s)
    }
    fn str(&mut self, n: u64) -> Result<String> {
        let n = usize::try_from(n).map_err(|_| self.bad("has a string longer than the pickle"))?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.bad("has a string that is not UTF-8"))
    }
}

/// The state dict pickled in `data` (the archive's `data.pkl`, named `file` in errors): each tensor's name and where
/// its data lies.
pub fn state_dict(file: &str, data: &[u8]) -> Result<Vec<(String, TensorRef)>> {
    let mut r = Reader { file, b: data, p: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: std::collections::HashMap<u32, Value> = std::collections::HashMap::new();
    let pop = |stack: &mut Vec<Value>, r: &Reader| stack.pop().ok_or_else(|| r.bad("pops an empty stack"));
    let pop_mark = |stack: &mut Vec<Value>, r: &Reader| -> Result<Vec<Value>> {
        let at = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| r.bad("has no MARK"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        if stack.len() > MAX_VALUES || memo.len() > MAX_VALUES {
            return Err(r.bad("holds more values than a state dict"));
        }
        let op = r.u8()?;
        match op {
            0x80 => {
                let v = r.u8()?;
                if v > 5 {
                    return Err(r.bad(format!("is protocol {v}, newer than any Python writes")));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint
            }
            b'.' => break,
            b'(' => stack.push(Value::Mark),
            b')' => stack.push(Value::Tuple(vec![])),
            b't' => {
                let items = pop_mark(&mut stack, &r)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(r.bad("pops an empty stack"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b']' => stack.push(Value::List(vec![])),
            b'l' => {
                let items = pop_mark(&mut stack, &r)?;
                stack.push(Value::List(items));
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![pop(&mut stack, &r)?] } else { pop_mark(&mut stack, &r)? };
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(r.bad("appends to something that is not a list")),
                }
            }
            b'}' => stack.push(Value::Dict(vec![])),
            b'd' => {
                let items = pop_mark(&mut stack, &r)?;
                stack.push(Value::Dict(pairs(items, &r)?));
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack, &r)?;
                    vec![pop(&mut stack, &r)?, v]
                } else {
                    pop_mark(&mut stack, &r)?
                };
                let items = pairs(items, &r)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(items),
                    _ => return Err(r.bad("sets an item of something that is not a dict")),
                }
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool),
            0x89 => stack.push(Value::Bool),
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                let s = r.take(n)?;
                if n > 8 {
                    return Err(r.bad("has an integer too large for a shape"));
                }
                let mut buf = [if s.last().is_some_and(|&b| b & 0x80 != 0) { 0xff } else { 0 }; 8];
                buf[..n].copy_from_slice(s);
                stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                r.take(8)?;
                stack.push(Value::Float);
            }
            b'X' => {
                let n = r.u32()? as u64;
                let s = r.str(n)?;
                stack.push(Value::Str(s));
            }
            0x8c => {
                let n = r.u8()? as u64;
                let s = r.str(n)?;
                stack.push(Value::Str(s));
            }
            0x8d => {
                let n = r.u64()?;
                let s = r.str(n)?;
                stack.push(Value::Str(s));
            }
            b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'B' => r.u32()? as u64,
                    b'C' => r.u8()? as u64,
                    _ => r.u64()?,
                };
                r.take(usize::try_from(n).map_err(|_| r.bad("has bytes longer than the pickle"))?)?;
                stack.push(Value::Bytes);
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                stack.push(Value::Global(accept(&r, &module, &name)?));
            }
            0x93 => {
                let name = pop(&mut stack, &r)?;
                let module = pop(&mut stack, &r)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(accept(&r, &m, &n)?)),
                    _ => return Err(r.bad("has a STACK_GLOBAL whose names are not text")),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack, &r)?;
                let f = pop(&mut stack, &r)?;
                let Value::Tuple(args) = args else { return Err(r.bad("calls with arguments that are not a tuple")) };
                stack.push(call(&r, f, args)?);
            }
            b'b' => {
                // BUILD: the state of the object below it (an OrderedDict's `_metadata`, a parameter's hooks): dropped
                pop(&mut stack, &r)?;
                if stack.is_empty() {
                    return Err(r.bad("builds nothing"));
                }
            }
            b'Q' => {
                let pid = pop(&mut stack, &r)?;
                stack.push(storage(&r, pid)?);
            }
            b'q' => {
                let k = r.u8()? as u32;
                memo.insert(k, stack.last().cloned().ok_or_else(|| r.bad("memoizes an empty stack"))?);
            }
            b'r' => {
                let k = r.u32()?;
                memo.insert(k, stack.last().cloned().ok_or_else(|| r.bad("memoizes an empty stack"))?);
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().ok_or_else(|| r.bad("memoizes an empty stack"))?);
            }
            b'h' | b'j' => {
                let k = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                stack.push(memo.get(&k).cloned().ok_or_else(|| r.bad(format!("refers to memo {k}, never stored")))?);
            }
            b'0' => {
                pop(&mut stack, &r)?;
            }
            b'1' => {
                pop_mark(&mut stack, &r)?;
            }
            b'2' => {
                let top = stack.last().cloned().ok_or_else(|| r.bad("duplicates an empty stack"))?;
                stack.push(top);
            }
            other => {
                return Err(
                    r.bad(format!("uses opcode {other:#04x} at byte {}, which a state dict does not need", r.p - 1))
                )
            }
        }
    }
    let top = stack.pop().ok_or_else(|| r.bad("is empty"))?;
    let Value::Dict(items) = top else { return Err(r.bad("does not hold a mapping of names to tensors")) };
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => out.push((name, t)),
            (Value::Str(name), _) => {
                return Err(Error::tensor(&name, format!("in {file} is not a tensor (this reader reads state dicts)")))
            }
            _ => return Err(r.bad("has a key that is not a tensor's name")),
        }
    }
    Ok(out)
}

/// An accepted global, or the sentence refusing it.
fn accept(r: &Reader, module: &str, name: &str) -> Result<Global> {
    global(module, name).ok_or_else(|| {
        Error::file(
            r.file,
            format!(
                "asks to load `{module}.{name}`, which a state dict does not need: refused (its pickle is read as \
                 data, and only the tensor-rebuilding calls and OrderedDict are accepted)"
            ),
        )
    })
}

fn pairs(items: Vec<Value>, r: &Reader) -> Result<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err(r.bad("sets a key without its value"));
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// A persistent id: `('storage', StorageType, key, location, numel)`.
fn storage(r: &Reader, pid: Value) -> Result<Value> {
    let Value::Tuple(t) = pid else { return Err(r.bad("has a persistent id that is not a tuple")) };
    match t.as_slice() {
        [Value::Str(kind), Value::Global(Global::Storage(dtype)), Value::Str(key), ..] if kind == "storage" => {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(r.bad(format!("names a storage `{key}` that is not an entry of the archive")));
            }
            Ok(Value::Storage { key: key.clone(), dtype: *dtype })
        }
        _ => Err(r.bad("has a persistent id that is not a storage")),
    }
}

fn ints(r: &Reader, v: &Value, what: &str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(xs) | Value::List(xs) => xs
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(r.bad(format!("has a tensor {what} that is not a list of whole numbers"))),
            })
            .collect(),
        _ => Err(r.bad(format!("has a tensor {what} that is not a tuple"))),
    }
}

/// A call of an accepted global, made as a plain value.
fn call(r: &Reader, f: Value, args: Vec<Value>) -> Result<Value> {
    match f {
        Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(vec![])),
        Value::Global(Global::RebuildTensor) => match args.as_slice() {
            [Value::Storage { key, dtype }, Value::Int(offset), size, stride, ..] if *offset >= 0 => {
                Ok(Value::Tensor(TensorRef {
                    key: key.clone(),
                    dtype: *dtype,
                    offset: *offset as u64,
                    shape: ints(r, size, "shape")?,
                    stride: ints(r, stride, "stride")?,
                }))
            }
            _ => Err(r.bad("rebuilds a tensor from arguments that are not a storage, an offset, a shape and strides")),
        },
        Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(r.bad("rebuilds a parameter from something that is not a tensor")),
        },
        Value::Global(g) => Err(r.bad(format!("calls {g:?} in a way a state dict does not"))),
        _ => Err(r.bad("calls something that is not a function")),
    }
}
