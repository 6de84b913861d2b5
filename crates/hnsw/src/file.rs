//! The graph file: a header, the graph's arrays in little-endian order, and a CRC-32 of all
//! of it. A file is checked twice on the way in: the checksum catches damage on disk, and
//! [`Graph::validate`] checks every link, so a file that passes cannot make a search index
//! out of bounds whatever produced it.

use std::io::{self, Write};

use crate::{Graph, Shape, MAX_LEVEL, NONE};

const MAGIC: &[u8; 8] = b"QHNSW\x00\x00\x01";

impl Graph {
    /// Writes the graph: a header, the arrays in little-endian order, and a CRC-32 of all of it.
    pub fn write_to(&self, out: impl Write) -> io::Result<()> {
        let mut w = Crc32Writer {
            inner: out,
            crc: crc32fast::Hasher::new(),
        };
        w.write_all(MAGIC)?;
        for x in [
            self.shape.dim as u64,
            self.shape.m as u64,
            self.shape.ef_construction as u64,
            self.ids.len() as u64,
            self.upper.len() as u64,
            self.entry as u64,
            self.top as u64,
        ] {
            w.write_all(&x.to_le_bytes())?;
        }
        write_words(&mut w, &self.ids, |x| x.to_le_bytes())?;
        write_words(&mut w, &self.scales, |x| x.to_le_bytes())?;
        w.write_all(&self.levels)?;
        w.write_all(&self.counts0)?;
        write_words(&mut w, &self.upper_at, |x| x.to_le_bytes())?;
        write_words(&mut w, &self.links0, |x| x.to_le_bytes())?;
        for list in &self.upper {
            w.write_all(&(list.len() as u32).to_le_bytes())?;
            write_words(&mut w, list, |x| x.to_le_bytes())?;
        }
        let codes: Vec<u8> = self.codes.iter().map(|&c| c as u8).collect();
        w.write_all(&codes)?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())?;
        w.inner.flush()
    }

    /// Reads what [`Graph::write_to`] wrote; the error says what is wrong with the bytes.
    pub fn read_from(bytes: &[u8], ef_construction: usize) -> Result<Graph, String> {
        let (body, crc) = bytes
            .split_last_chunk::<4>()
            .ok_or("graph file is truncated")?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err("graph file checksum does not match".into());
        }
        let mut r = Reader { bytes: body };
        if r.take(8)? != MAGIC {
            return Err("not a Quarry graph file (or another format version)".into());
        }
        let mut header = [0u64; 7];
        for h in &mut header {
            *h = u64::from_le_bytes(r.array()?);
        }
        let [dim, m, _ef, n, uppers, entry, top] = header.map(|x| x as usize);
        // Every count is checked against the bytes that could hold it before anything is
        // allocated from it: a header that claims more than the file holds is refused, never
        // trusted for an allocation (or an index).
        let left = r.bytes.len();
        if !(2..=127).contains(&m)
            || top > MAX_LEVEL as usize
            || (n > 0) != (entry != NONE as usize)
            || (n > 0 && entry >= n)
            || n > u32::MAX as usize
            || dim == 0
            || n.checked_mul(18 + 8 * m).is_none_or(|b| b > left)
            || n.checked_mul(dim).is_none_or(|b| b > left)
            || uppers.checked_mul(4).is_none_or(|b| b > left)
        {
            return Err("graph file header is inconsistent".into());
        }
        let m0 = 2 * m;
        let ids = r.words(n, u64::from_le_bytes)?;
        let scales = r.words(n, f32::from_le_bytes)?;
        let levels = r.take(n)?.to_vec();
        let counts0 = r.take(n)?.to_vec();
        let upper_at = r.words(n, u32::from_le_bytes)?;
        let links0 = r.words(n * m0, u32::from_le_bytes)?;
        let mut upper = Vec::with_capacity(uppers);
        for _ in 0..uppers {
            let len = u32::from_le_bytes(r.array()?) as usize;
            if len > m {
                return Err("graph file has an overfull link list".into());
            }
            upper.push(r.words(len, u32::from_le_bytes)?);
        }
        let codes: Vec<i8> = r.take(n * dim)?.iter().map(|&c| c as i8).collect();
        if !r.bytes.is_empty() {
            return Err("graph file has trailing bytes".into());
        }
        let mut g = Graph {
            shape: Shape {
                dim,
                m,
                ef_construction,
            },
            ids,
            scales,
            levels,
            codes,
            links0,
            counts0,
            in0: vec![0; n],
            orphaned: Vec::new(),
            upper_at,
            upper,
            entry: entry as u32,
            top: top as u8,
        };
        g.validate()?;
        for (node, &count) in g.counts0.iter().enumerate() {
            for &x in &g.links0[node * m0..node * m0 + count as usize] {
                g.in0[x as usize] += 1;
            }
        }
        Ok(g)
    }

    /// Every link points at a node and every list fits its level, so a damaged file that got
    /// past the checksum cannot make a search index out of bounds.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let n = self.len();
        let m0 = self.m0();
        if self.entry != NONE && self.levels[self.entry as usize] != self.top {
            return Err("graph entry point is not on the top level".into());
        }
        for node in 0..n {
            let level = self.levels[node];
            if self.counts0[node] as usize > m0 || level > MAX_LEVEL {
                return Err(format!("graph node {node} is malformed"));
            }
            let at = self.upper_at[node];
            if (level == 0) != (at == NONE)
                || (at != NONE && at as usize + level as usize > self.upper.len())
            {
                return Err(format!("graph node {node} has bad upper links"));
            }
            for l in 0..=level {
                if self
                    .neighbours(node as u32, l)
                    .iter()
                    .any(|&x| x as usize >= n || self.levels[x as usize] < l)
                {
                    return Err(format!("graph node {node} links outside the graph"));
                }
            }
        }
        Ok(())
    }
}

struct Crc32Writer<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc32Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `words` through a buffer of their little-endian bytes.
fn write_words<T: Copy, const N: usize>(
    w: &mut impl Write,
    words: &[T],
    bytes: impl Fn(T) -> [u8; N],
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(words.len().min(1 << 16) * N);
    for chunk in words.chunks(1 << 16) {
        buf.clear();
        for &x in chunk {
            buf.extend_from_slice(&bytes(x));
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err("graph file is truncated".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn words<T, const N: usize>(
        &mut self,
        count: usize,
        from: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, String> {
        let len = count.checked_mul(N).ok_or("graph file is truncated")?;
        let b = self.take(len)?;
        Ok(b.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                from(a)
            })
            .collect())
    }
}
