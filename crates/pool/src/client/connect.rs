//! Connections to pool servers: opening one (TCP, the handshake proving the shared secret both
//! ways, then TCP or UCX frames), and picking a live one per member, marking a member down when
//! it cannot be reached.

use super::*;

impl PoolClient {
    async fn connect(&self, m: &MemberState) -> Result<Arc<Conn>> {
        let addr = m.addr.clone();
        let sock = TcpStream::connect(&addr)
            .await
            .map_err(|e| unavailable(&addr, format_args!("connect failed: {e}")))?;
        let _ = sock.set_nodelay(true);
        // A server on this host: a loopback address, or this side's own.
        let local = || match (sock.peer_addr(), sock.local_addr()) {
            (Ok(p), Ok(l)) => p.ip().to_canonical().is_loopback() || p.ip() == l.ip(),
            _ => false,
        };
        let splice = match self.cfg.splice {
            Splice::Remote => !local(),
            Splice::Always => true,
            Splice::Never => false,
        };
        wire::size_socket_buffers(std::os::fd::AsRawFd::as_raw_fd(&sock));
        let (mut rd, mut wr) = sock.into_split();
        let (hello, nonce) = read_frame(&mut rd, 64)
            .await
            .map_err(|e| unavailable(&addr, format_args!("handshake failed: {e}")))?;
        if hello.op != Op::Hello {
            return Err(unavailable(&addr, "handshake failed: no hello"));
        }
        let mine = auth::nonce();
        let proof = match (
            &self.cfg.secret,
            hello.flags & wire::FLAG_AUTH_REQUIRED != 0,
        ) {
            (Some(s), _) => [&auth::proof(s, &nonce)[..], &mine[..]].concat(),
            (None, true) => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "pool server {addr} requires a shared secret; configure the pool secret"
                    ),
                ))
            }
            (None, false) => Vec::new(),
        };
        let f = Frame::request(Op::Auth, 0, BlockKey::default(), proof.len() as u32);
        wr.write_all(&f.encode())
            .await
            .map_err(|e| unavailable(&addr, e))?;
        wr.write_all(&proof)
            .await
            .map_err(|e| unavailable(&addr, e))?;
        match read_frame(&mut rd, auth::PROOF_LEN as u32).await {
            Ok((f, back)) if f.op == Op::Auth && f.status == Status::Ok => {
                if let Some(s) = &self.cfg.secret {
                    if !auth::verify_server(s, &mine, &back) {
                        return Err(Error::new(
                            ErrorKind::PermissionDenied,
                            format!(
                                "pool server {addr} did not prove the shared secret: it is not \
                                 configured with this secret (or is not a kvtier pool server)"
                            ),
                        ));
                    }
                }
            }
            Ok(_) | Err(ReadError::Closed) | Err(ReadError::Io(_)) => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("pool server {addr} refused the connection: wrong shared secret?"),
                ))
            }
            Err(e) => return Err(unavailable(&addr, e)),
        }
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>> = Default::default();
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel::<(Frame, Option<Arc<AlignedBuf>>, Vec<u8>)>(256);
        if self.cfg.transport == Transport::Ucx {
            #[cfg(feature = "ucx")]
            {
                let bell = crate::ucx::connect_client(
                    rd,
                    wr,
                    rx,
                    pending.clone(),
                    dead.clone(),
                    self.cfg.max_body,
                    self.bufs.clone(),
                )
                .await
                .map_err(|e| unavailable(&addr, e))?;
                return Ok(Arc::new(Conn {
                    out: tx,
                    pending,
                    dead,
                    bell: Some(bell),
                }));
            }
            #[cfg(not(feature = "ucx"))]
            return Err(Error::invalid(
                "this kvtier was built without UCX; rebuild with `--features ucx` or use the tcp transport",
            ));
        }
        // Writer: frames in the order calls were made. Large records are spliced (their pages
        // handed to the kernel, not copied: see `super::splice`).
        let (p2, d2) = (pending.clone(), dead.clone());
        // Spliced records, kept alive until their answer arrives (the kernel reads their pages
        // until the server has read them, even if the caller gave up on the put meanwhile).
        let held: Arc<Mutex<HashMap<u64, Arc<AlignedBuf>>>> = Default::default();
        let (h2, h3) = (held.clone(), held.clone());
        let mut pipe = if splice {
            crate::splice::SplicePipe::new()
                .inspect_err(|e| {
                    kvtier_core::metrics::Fallback::SpliceToCopy.count();
                    tracing::debug!(error = %e, "no pipe for zero-copy sends; copying records");
                })
                .ok()
        } else {
            None
        };
        self.rt.spawn(async move {
            while let Some((f, rec, bytes)) = rx.recv().await {
                let res = async {
                    let head = f.encode();
                    // A request's body is its record, or bytes of its own (puts carry none;
                    // any would follow the record).
                    let Some(r) = rec else {
                        return write_frame(&mut wr, &head, &bytes).await;
                    };
                    let body = &r[..f.body_len as usize];
                    if let Some(p) = pipe.as_ref().filter(|_| body.len() >= SPLICE_MIN) {
                        // Held before any byte goes out, so its answer always finds it.
                        h2.lock().insert(f.id, r.clone());
                        wr.write_all(&head).await?;
                        if p.send(wr.as_ref(), body).await? {
                            return wr.write_all(&bytes).await;
                        }
                        h2.lock().remove(&f.id);
                        // Refused (a seccomp profile, say): copy from now on.
                        kvtier_core::metrics::Fallback::SpliceToCopy.count();
                        tracing::debug!("vmsplice refused; copying records");
                        pipe = None;
                        wr.write_all(body).await?;
                        return wr.write_all(&bytes).await;
                    }
                    write_frame(&mut wr, &head, body).await?;
                    wr.write_all(&bytes).await
                }
                .await;
                if res.is_err() {
                    break;
                }
            }
            d2.store(true, Ordering::Relaxed);
            p2.lock().clear();
        });
        // Reader: hands each response to its caller by request id.
        let (p3, d3, max) = (pending.clone(), dead.clone(), self.cfg.max_body);
        let bufs = self.bufs.clone();
        self.rt.spawn(async move {
            loop {
                let fd = std::os::fd::AsRawFd::as_raw_fd(rd.as_ref());
                match read_answer(&mut rd, max, &bufs, Some(fd)).await {
                    Ok((f, body, hash)) => {
                        h3.lock().remove(&f.id);
                        if let Some(tx) = p3.lock().remove(&f.id) {
                            let _ = tx.send(Ok((f, body, hash)));
                        }
                    }
                    Err(e) => {
                        // The connection is gone: no one will read those pages any more.
                        h3.lock().clear();
                        d3.store(true, Ordering::Relaxed);
                        for (_, tx) in p3.lock().drain() {
                            let _ = tx.send(Err(Error::new(
                                ErrorKind::Unavailable,
                                format!("connection lost: {e}"),
                            )));
                        }
                        break;
                    }
                }
            }
        });
        Ok(Arc::new(Conn {
            out: tx,
            pending,
            dead,
            #[cfg(feature = "ucx")]
            bell: None,
        }))
    }

    pub(super) async fn conn(&self, st: &Arc<MemberState>) -> Result<Arc<Conn>> {
        let addr = &st.addr;
        if let Some(until) = *st.down_until.lock() {
            if Instant::now() < until {
                return Err(unavailable(addr, "marked down after a recent failure"));
            }
        }
        let pick = |conns: &mut Vec<Arc<Conn>>| {
            conns.retain(|c| !c.dead.load(Ordering::Relaxed));
            (conns.len() >= self.cfg.conns_per_member.max(1))
                .then(|| conns[st.next.fetch_add(1, Ordering::Relaxed) % conns.len()].clone())
        };
        if let Some(c) = pick(&mut st.conns.lock()) {
            return Ok(c);
        }
        let _g = st.connecting.lock().await;
        if let Some(c) = pick(&mut st.conns.lock()) {
            return Ok(c);
        }
        match self.connect(st).await {
            Ok(c) => {
                *st.down_until.lock() = None;
                st.conns.lock().push(c.clone());
                Ok(c)
            }
            Err(e) => {
                // A server that has connections alive is not down; use one of them.
                let alive = st.conns.lock().first().cloned();
                match alive {
                    Some(c) => Ok(c),
                    None => {
                        *st.down_until.lock() = Some(Instant::now() + self.cfg.down_for);
                        Err(e)
                    }
                }
            }
        }
    }
}
