//! SOCKS5 server side, sans-IO: the method negotiation (RFC 1928 §3), the
//! username/password sub-negotiation (RFC 1929), the request (§4) and the
//! replies (§6).
//!
//! [`Handshake`] is fed what the client sent so far and says what to do
//! next; it never reads past the message it is parsing, so bytes after the
//! request (a client that does not wait for the reply) stay with the caller.
//! Every message has a bounded size (at most [`MAX_MESSAGE`] bytes), so a
//! caller's buffer of that size always suffices; nothing here panics on any
//! input (proptest and the `socks5` fuzz target).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::proxy::{Target, Users};

pub const VERSION: u8 = 5;
/// RFC 1929's sub-negotiation version.
pub const AUTH_VERSION: u8 = 1;
pub const METHOD_NO_AUTH: u8 = 0x00;
pub const METHOD_USER_PASS: u8 = 0x02;
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
/// The longest client message: username/password with 255-byte fields.
pub const MAX_MESSAGE: usize = 3 + 255 + 255;

/// The request's command (RFC 1928 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
}

/// A reply code (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

/// Why a handshake failed. [`Socks5Error::reason`] names it for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    #[error("not SOCKS5 (version byte {0:#04x})")]
    Version(u8),
    #[error("the greeting offers no method")]
    NoMethods,
    #[error("no offered method is acceptable")]
    NoAcceptableMethod,
    #[error("bad username/password sub-negotiation version {0:#04x}")]
    AuthVersion(u8),
    #[error("bad credentials")]
    BadCredentials,
    #[error("unsupported command {0:#04x}")]
    Command(u8),
    #[error("reserved byte is {0:#04x}, not 0")]
    Reserved(u8),
    #[error("unsupported address type {0:#04x}")]
    AddressType(u8),
    #[error("invalid host name")]
    HostName,
    #[error("handshake already finished")]
    Finished,
}

impl Socks5Error {
    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Socks5Error::Version(_) => "bad_version",
            Socks5Error::NoMethods | Socks5Error::AuthVersion(_) | Socks5Error::Reserved(_) => {
                "malformed"
            }
            Socks5Error::NoAcceptableMethod => "no_acceptable_method",
            Socks5Error::BadCredentials => "bad_credentials",
            Socks5Error::Command(_) => "unsupported_command",
            Socks5Error::AddressType(_) => "unsupported_address_type",
            Socks5Error::HostName => "bad_host_name",
            Socks5Error::Finished => "malformed",
        }
    }
}

/// A reply to write to the client (at most 22 bytes: the longest is a
/// request reply with an IPv6 address).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Out {
    buf: [u8; 22],
    len: u8,
}

impl Out {
    fn new(bytes: &[u8]) -> Out {
        let mut buf = [0u8; 22];
        let len = bytes.len().min(22);
        buf[..len].copy_from_slice(&bytes[..len]);
        Out {
            buf,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Out({:02x?})", self.as_bytes())
    }
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The message is not complete: read more and call again with the
    /// same bytes plus the new ones.
    NeedMore,
    /// `used` bytes were consumed; write `out` and continue with the rest.
    Send { used: usize, out: Out },
    /// The request is complete (`used` bytes): open the way to `target`,
    /// then write [`reply`] with the outcome.
    Connect { used: usize, target: Target },
    /// The handshake failed: write `out` if there is one, then close.
    Refuse {
        out: Option<Out>,
        error: Socks5Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Auth,
    Request,
    Done,
}

/// One client's negotiation, from greeting to request.
#[derive(Debug)]
pub struct Handshake<'u> {
    users: &'u Users,
    state: State,
}

impl<'u> Handshake<'u> {
    /// Clients must authenticate as one of `users` if it is not empty.
    pub fn new(users: &'u Users) -> Handshake<'u> {
        Handshake {
            users,
            state: State::Greeting,
        }
    }

    /// Feed the client's unconsumed bytes (starting at the message being
    /// parsed).
    pub fn step(&mut self, buf: &[u8]) -> Step {
        let r = match self.state {
            State::Greeting => self.greeting(buf),
            State::Auth => self.auth(buf),
            State::Request => self.request(buf),
            State::Done => Err((None, Socks5Error::Finished)),
        };
        match r {
            Ok(step) => step,
            Err((out, error)) => {
                self.state = State::Done;
                Step::Refuse { out, error }
            }
        }
    }

    fn greeting(&mut self, buf: &[u8]) -> Result<Step, (Option<Out>, Socks5Error)> {
        let Some(&ver) = buf.first() else {
            return Ok(Step::NeedMore);
        };
        if ver != VERSION {
            return Err((None, Socks5Error::Version(ver)));
        }
        let Some(&n) = buf.get(1) else {
            return Ok(Step::NeedMore);
        };
        if n == 0 {
            let out = Out::new(&[VERSION, METHOD_NONE_ACCEPTABLE]);
            return Err((Some(out), Socks5Error::NoMethods));
        }
        let Some(methods) = buf.get(2..2 + n as usize) else {
            return Ok(Step::NeedMore);
        };
        let want = if self.users.required() {
            METHOD_USER_PASS
        } else {
            METHOD_NO_AUTH
        };
        if !methods.contains(&want) {
            let out = Out::new(&[VERSION, METHOD_NONE_ACCEPTABLE]);
            return Err((Some(out), Socks5Error::NoAcceptableMethod));
        }
        self.state = if want == METHOD_USER_PASS {
            State::Auth
        } else {
            State::Request
        };
        Ok(Step::Send {
            used: 2 + n as usize,
            out: Out::new(&[VERSION, want]),
        })
    }

    fn auth(&mut self, buf: &[u8]) -> Result<Step, (Option<Out>, Socks5Error)> {
        let fail = Out::new(&[AUTH_VERSION, 1]);
        let Some(&ver) = buf.first() else {
            return Ok(Step::NeedMore);
        };
        if ver != AUTH_VERSION {
            return Err((Some(fail), Socks5Error::AuthVersion(ver)));
        }
        let Some(&ulen) = buf.get(1) else {
            return Ok(Step::NeedMore);
        };
        let ulen = ulen as usize;
        let Some(&plen) = buf.get(2 + ulen) else {
            return Ok(Step::NeedMore);
        };
        let plen = plen as usize;
        let end = 3 + ulen + plen;
        let Some(password) = buf.get(3 + ulen..end) else {
            return Ok(Step::NeedMore);
        };
        let name = &buf[2..2 + ulen];
        if !self.users.check(name, password) {
            return Err((Some(fail), Socks5Error::BadCredentials));
        }
        self.state = State::Request;
        Ok(Step::Send {
            used: end,
            out: Out::new(&[AUTH_VERSION, 0]),
        })
    }

    fn request(&mut self, buf: &[u8]) -> Result<Step, (Option<Out>, Socks5Error)> {
        let refuse = |code: ReplyCode, e: Socks5Error| Err((Some(reply(code, None)), e));
        if buf.len() < 4 {
            if let Some(&ver) = buf.first() {
                if ver != VERSION {
                    return refuse(ReplyCode::GeneralFailure, Socks5Error::Version(ver));
                }
            }
            return Ok(Step::NeedMore);
        }
        let (ver, cmd, rsv, atyp) = (buf[0], buf[1], buf[2], buf[3]);
        if ver != VERSION {
            return refuse(ReplyCode::GeneralFailure, Socks5Error::Version(ver));
        }
        if rsv != 0 {
            return refuse(ReplyCode::GeneralFailure, Socks5Error::Reserved(rsv));
        }
        let command = match cmd {
            1 => Command::Connect,
            2 => Command::Bind,
            3 => Command::UdpAssociate,
            c => return refuse(ReplyCode::CommandNotSupported, Socks5Error::Command(c)),
        };
        let (host_end, ip) = match atyp {
            1 => (8, None),
            4 => (20, None),
            3 => match buf.get(4) {
                Some(&n) => (5 + n as usize, Some(())),
                None => return Ok(Step::NeedMore),
            },
            a => {
                return refuse(
                    ReplyCode::AddressTypeNotSupported,
                    Socks5Error::AddressType(a),
                )
            }
        };
        let Some(port) = buf.get(host_end..host_end + 2) else {
            return Ok(Step::NeedMore);
        };
        let port = u16::from_be_bytes([port[0], port[1]]);
        let used = host_end + 2;
        // Every field is read: refuse other commands only now, so the
        // request was well formed and the reply is the right one.
        if command != Command::Connect {
            return refuse(ReplyCode::CommandNotSupported, Socks5Error::Command(cmd));
        }
        let target = match (atyp, ip) {
            (1, _) => {
                let a: [u8; 4] = buf[4..8].try_into().unwrap_or_default();
                Target::Addr(SocketAddr::new(Ipv4Addr::from(a).into(), port))
            }
            (4, _) => {
                let a: [u8; 16] = buf[4..20].try_into().unwrap_or_default();
                Target::Addr(SocketAddr::new(Ipv6Addr::from(a).into(), port))
            }
            _ => match Target::from_host(&buf[5..host_end], port) {
                Some(t) => t,
                None => return refuse(ReplyCode::HostUnreachable, Socks5Error::HostName),
            },
        };
        self.state = State::Done;
        Ok(Step::Connect { used, target })
    }
}

/// The reply to a request: `code`, and the address the relay connected
/// from (`None`: all zeros, IPv4, which clients accept for CONNECT).
pub fn reply(code: ReplyCode, bound: Option<SocketAddr>) -> Out {
    let mut b = [0u8; 22];
    b[0] = VERSION;
    b[1] = code as u8;
    let bound = bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let len = match bound.ip() {
        IpAddr::V4(a) => {
            b[3] = 1;
            b[4..8].copy_from_slice(&a.octets());
            8
        }
        IpAddr::V6(a) => {
            b[3] = 4;
            b[4..20].copy_from_slice(&a.octets());
            20
        }
    };
    b[len..len + 2].copy_from_slice(&bound.port().to_be_bytes());
    Out::new(&b[..len + 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn users() -> Users {
        Users::new([("alice".to_string(), b"pw".to_vec())])
    }

    fn sent(step: Step) -> (usize, Vec<u8>) {
        match step {
            Step::Send { used, out } => (used, out.as_bytes().to_vec()),
            s => panic!("expected Send, got {s:?}"),
        }
    }

    #[test]
    fn no_auth_connect_to_an_ipv4_address() {
        let none = Users::default();
        let mut h = Handshake::new(&none);
        assert_eq!(sent(h.step(&[5, 2, 2, 0])), (4, vec![5, 0]));
        let req = [5, 1, 0, 1, 10, 10, 3, 2, 0x1f, 0x90];
        assert_eq!(
            h.step(&req),
            Step::Connect {
                used: 10,
                target: Target::Addr("10.10.3.2:8080".parse().unwrap())
            }
        );
        assert_eq!(
            h.step(&req),
            Step::Refuse {
                out: None,
                error: Socks5Error::Finished
            }
        );
    }

    #[test]
    fn ipv6_and_domain_targets() {
        let none = Users::default();
        let mut h = Handshake::new(&none);
        sent(h.step(&[5, 1, 0]));
        let mut req = vec![5, 1, 0, 4];
        req.extend_from_slice(&"fd10:3::2".parse::<Ipv6Addr>().unwrap().octets());
        req.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            h.step(&req),
            Step::Connect {
                used: 22,
                target: Target::Addr("[fd10:3::2]:443".parse().unwrap())
            }
        );
        let mut h = Handshake::new(&none);
        sent(h.step(&[5, 1, 0]));
        let mut req = vec![5, 1, 0, 3, 11];
        req.extend_from_slice(b"server.test");
        req.extend_from_slice(&80u16.to_be_bytes());
        req.extend_from_slice(b"GET /"); // early data stays with the caller
        assert_eq!(
            h.step(&req),
            Step::Connect {
                used: 18,
                target: Target::Name {
                    host: "server.test".into(),
                    port: 80
                }
            }
        );
    }

    #[test]
    fn username_password_accepted_and_refused() {
        let u = users();
        let mut h = Handshake::new(&u);
        // Offering only no-auth when auth is required: refused.
        assert_eq!(
            Handshake::new(&u).step(&[5, 1, 0]),
            Step::Refuse {
                out: Some(Out::new(&[5, 0xff])),
                error: Socks5Error::NoAcceptableMethod
            }
        );
        assert_eq!(sent(h.step(&[5, 2, 0, 2])), (4, vec![5, 2]));
        assert_eq!(sent(h.step(b"\x01\x05alice\x02pw")), (10, vec![1, 0]));
        let mut h = Handshake::new(&u);
        sent(h.step(&[5, 1, 2]));
        assert_eq!(
            h.step(b"\x01\x05alice\x02px"),
            Step::Refuse {
                out: Some(Out::new(&[1, 1])),
                error: Socks5Error::BadCredentials
            }
        );
    }

    #[test]
    fn bind_and_udp_associate_get_command_not_supported() {
        let none = Users::default();
        for cmd in [2u8, 3, 9] {
            let mut h = Handshake::new(&none);
            sent(h.step(&[5, 1, 0]));
            match h.step(&[5, cmd, 0, 1, 1, 2, 3, 4, 0, 80]) {
                Step::Refuse {
                    out: Some(out),
                    error,
                } => {
                    assert_eq!(out.as_bytes()[..2], [5, 7]);
                    assert_eq!(error, Socks5Error::Command(cmd));
                }
                s => panic!("{s:?}"),
            }
        }
    }

    #[test]
    fn malformed_input_is_refused_with_the_right_reply() {
        let none = Users::default();
        let req = |bytes: &[u8]| {
            let mut h = Handshake::new(&none);
            sent(h.step(&[5, 1, 0]));
            h.step(bytes)
        };
        let code = |s: Step| match s {
            Step::Refuse {
                out: Some(o),
                error,
            } => (o.as_bytes()[1], error.reason()),
            s => panic!("{s:?}"),
        };
        assert_eq!(code(req(&[5, 1, 0, 7, 0])), (8, "unsupported_address_type"));
        assert_eq!(code(req(&[5, 1, 1, 1, 0, 0, 0, 0, 0, 0])), (1, "malformed"));
        assert_eq!(
            code(req(b"\x05\x01\x00\x03\x03a b\x00\x50")),
            (4, "bad_host_name")
        );
        assert_eq!(
            code(req(b"\x05\x01\x00\x03\x00\x00\x50")),
            (4, "bad_host_name")
        );
        assert_eq!(
            Handshake::new(&none).step(b"GET / HTTP/1.1\r\n"),
            Step::Refuse {
                out: None,
                error: Socks5Error::Version(b'G')
            }
        );
        assert_eq!(
            Handshake::new(&none).step(&[5, 0]),
            Step::Refuse {
                out: Some(Out::new(&[5, 0xff])),
                error: Socks5Error::NoMethods
            }
        );
    }

    #[test]
    fn replies_carry_the_bound_address() {
        assert_eq!(
            reply(ReplyCode::Succeeded, None).as_bytes(),
            &[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let r = reply(ReplyCode::NotAllowed, Some("[::1]:258".parse().unwrap()));
        assert_eq!(r.as_bytes().len(), 22);
        assert_eq!(&r.as_bytes()[..4], &[5, 2, 0, 4]);
        assert_eq!(&r.as_bytes()[19..], &[1, 1, 2]);
    }

    /// Feed `bytes` split at `cuts`: the same steps as all at once.
    fn run(users: &Users, bytes: &[u8], cuts: &[usize]) -> Vec<Step> {
        let mut h = Handshake::new(users);
        let mut steps = Vec::new();
        let mut have = 0;
        let mut start = 0;
        let mut edges: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        edges.push(bytes.len());
        edges.sort_unstable();
        for edge in edges {
            have = have.max(edge);
            loop {
                match h.step(&bytes[start..have]) {
                    Step::NeedMore => break,
                    s @ Step::Send { used, .. } => {
                        start += used;
                        steps.push(s);
                    }
                    s => {
                        steps.push(s);
                        return steps;
                    }
                }
            }
        }
        steps
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic_and_never_overrun(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            auth: bool,
        ) {
            let u = if auth { users() } else { Users::default() };
            let mut h = Handshake::new(&u);
            let mut start = 0;
            for _ in 0..4 {
                match h.step(&bytes[start..]) {
                    Step::Send { used, .. } => {
                        prop_assert!(used > 0 && start + used <= bytes.len());
                        start += used;
                    }
                    Step::Connect { used, .. } => {
                        prop_assert!(start + used <= bytes.len());
                        break;
                    }
                    _ => break,
                }
            }
        }

        #[test]
        fn split_delivery_gives_the_same_steps(
            host in "[a-z]{1,20}(\\.[a-z0-9]{1,10}){0,3}",
            port: u16,
            auth: bool,
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let u = if auth { users() } else { Users::default() };
            let mut bytes = if auth { vec![5, 1, 2, 1, 5] } else { vec![5, 1, 0] };
            if auth {
                bytes.extend_from_slice(b"alice\x02pw");
            }
            bytes.extend_from_slice(&[5, 1, 0, 3, host.len() as u8]);
            bytes.extend_from_slice(host.as_bytes());
            bytes.extend_from_slice(&port.to_be_bytes());
            let whole = run(&u, &bytes, &[]);
            prop_assert_eq!(
                whole.last().cloned(),
                Some(Step::Connect {
                    used: 7 + host.len(),
                    target: Target::Name { host: host.clone(), port }
                })
            );
            prop_assert_eq!(run(&u, &bytes, &cuts), whole);
        }
    }
}
