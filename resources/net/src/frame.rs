//! One frame as metac-net carries it: the 10-byte virtio-net header a TAP with `IFF_VNET_HDR` puts before every
//! frame, then the Ethernet frame. The header says whether the frame is a GSO segment (a TCP or UDP run of up to
//! 64 KiB that the receiving kernel cuts into MTU-sized packets, or hands to a program whole) and where a checksum
//! is still to be filled in, so a segment crosses the mesh whole instead of as 40 packets.
//!
//! Everything here reads untrusted bytes (a binder's frames reach the exporter's switch and, through it, the other
//! binders' kernels): [`check`] decides whether a frame may be switched, and never panics on any input.

/// Bytes of the virtio-net header (`struct virtio_net_hdr`, without `num_buffers`).
pub const VNET_HDR: usize = 10;
/// An Ethernet header: destination, source, type.
pub const ETH_HDR: usize = 14;
/// The largest frame a TAP hands over with TSO: a 64 KiB GSO segment with its Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65_536 + ETH_HDR + 4;
/// The largest record (header and frame) anything accepts.
pub const MAX_RECORD: usize = VNET_HDR + MAX_FRAME;
/// The smallest record: a header and an Ethernet header.
pub const MIN_RECORD: usize = VNET_HDR + ETH_HDR;
/// The smallest segment MTU: IPv6 needs 1280.
pub const MIN_MTU: u16 = 576;
/// The largest segment MTU (jumbo frames).
pub const MAX_MTU: u16 = 9000;

const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;
/// The smallest IP + TCP headers a GSO segment's packets carry: its MSS plus these never exceeds the MTU.
const MIN_L3L4: usize = 28;

/// Why a frame is not switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its headers, or a header that does not describe the frame.
    Malformed,
    /// Larger than the segment's MTU allows.
    Oversize,
}

/// The virtio-net header's fields (little-endian, as a TAP gives them on the little-endian machines metac runs on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// A header that asks nothing of the kernel: a plain frame, checksums complete.
    pub const PLAIN: VnetHdr =
        VnetHdr { flags: 0, gso_type: GSO_NONE, hdr_len: 0, gso_size: 0, csum_start: 0, csum_offset: 0 };

    /// The header at the start of `record`, if it is long enough.
    pub fn parse(record: &[u8]) -> Option<VnetHdr> {
        let b = record.get(..VNET_HDR)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The header's 10 bytes.
    pub fn bytes(&self) -> [u8; VNET_HDR] {
        let mut b = [0u8; VNET_HDR];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Whether this is a GSO segment (several packets in one frame).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// Checks a record (header and frame) against the segment's `mtu`: a frame is switched only if its header is one
/// the kernel would accept and none of the packets it stands for is larger than the MTU. A VLAN tag is allowed
/// beyond the MTU, as switches do.
pub fn check(record: &[u8], mtu: u16) -> Result<VnetHdr, Reject> {
    if record.len() < MIN_RECORD || record.len() > MAX_RECORD {
        return Err(if record.len() > MAX_RECORD { Reject::Oversize } else { Reject::Malformed });
    }
    let h = VnetHdr::parse(record).ok_or(Reject::Malformed)?;
    let frame = &record[VNET_HDR..];
    let tagged = frame[12..14] == [0x81, 0x00];
    let l2 = ETH_HDR + if tagged { 4 } else { 0 };
    if h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(Reject::Malformed);
    }
    if h.flags & F_NEEDS_CSUM != 0 {
        let (start, off) = (usize::from(h.csum_start), usize::from(h.csum_offset));
        if start < ETH_HDR || start + off + 2 > frame.len() {
            return Err(Reject::Malformed);
        }
    }
    match h.gso_type & !GSO_ECN {
        GSO_NONE => {
            if h.gso_type & GSO_ECN != 0 {
                return Err(Reject::Malformed);
            }
            if frame.len() > l2 + usize::from(mtu) {
                return Err(Reject::Oversize);
            }
        }
        GSO_TCPV4 | GSO_TCPV6 | GSO_UDP | GSO_UDP_L4 => {
            // A segment is cut by the receiving kernel; what must fit is each packet: MSS plus its headers.
            if h.gso_size == 0 || h.flags & F_NEEDS_CSUM == 0 || usize::from(h.hdr_len) > frame.len() {
                return Err(Reject::Malformed);
            }
            if usize::from(h.gso_size) + MIN_L3L4 > usize::from(mtu) {
                return Err(Reject::Oversize);
            }
        }
        _ => return Err(Reject::Malformed),
    }
    Ok(h)
}

/// The destination MAC address of a record that passed [`check`].
pub fn dst(record: &[u8]) -> [u8; 6] {
    mac(&record[VNET_HDR..VNET_HDR + 6])
}

/// The source MAC address of a record that passed [`check`].
pub fn src(record: &[u8]) -> [u8; 6] {
    mac(&record[VNET_HDR + 6..VNET_HDR + 12])
}

fn mac(b: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(b);
    m
}

/// Whether `mac` is a group address (broadcast or multicast): the first octet's low bit.
pub fn is_group(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 1
}

/// A MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: [u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A plain frame of `payload` bytes from `src` to `dst` with a plain header.
    pub(crate) fn record(dst: [u8; 6], src: [u8; 6], payload: usize) -> Vec<u8> {
        let mut r = VnetHdr::PLAIN.bytes().to_vec();
        r.extend_from_slice(&dst);
        r.extend_from_slice(&src);
        r.extend_from_slice(&[0x86, 0xdd]);
        r.resize(r.len() + payload, 0x55);
        r
    }

    #[test]
    fn the_mtu_bounds_plain_frames_and_each_packet_of_a_segment() {
        let a = [2, 0, 0, 0, 0, 1];
        let b = [2, 0, 0, 0, 0, 2];
        assert!(check(&record(b, a, 1500), 1500).is_ok());
        assert_eq!(check(&record(b, a, 1501), 1500), Err(Reject::Oversize));
        assert_eq!(check(&record(b, a, 1501), 9000).map(|h| h.is_gso()), Ok(false));
        let mut tagged = record(b, a, 1504);
        tagged[VNET_HDR + 12..VNET_HDR + 14].copy_from_slice(&[0x81, 0x00]);
        assert!(check(&tagged, 1500).is_ok(), "a VLAN tag is allowed beyond the MTU");
        tagged.push(0);
        assert_eq!(check(&tagged, 1500), Err(Reject::Oversize), "one byte more than the tag allows");

        // A 64 KiB TCP segment with an MSS of 1440 fits a 1500 segment; one with an MSS of 8960 does not.
        let mut seg = record(b, a, 65_000);
        let mut h =
            VnetHdr { flags: 1, gso_type: GSO_TCPV6, hdr_len: 74, gso_size: 1440, csum_start: 54, csum_offset: 16 };
        seg[..VNET_HDR].copy_from_slice(&h.bytes());
        assert!(check(&seg, 1500).unwrap().is_gso());
        h.gso_size = 8960;
        seg[..VNET_HDR].copy_from_slice(&h.bytes());
        assert_eq!(check(&seg, 1500), Err(Reject::Oversize));
        assert!(check(&seg, 9000).is_ok());
    }

    #[test]
    fn headers_that_do_not_describe_their_frame_are_malformed() {
        let a = [2, 0, 0, 0, 0, 1];
        let r = record(a, a, 100);
        assert_eq!(check(&r[..MIN_RECORD - 1], 1500), Err(Reject::Malformed));
        let bad = |h: VnetHdr| {
            let mut r = r.clone();
            r[..VNET_HDR].copy_from_slice(&h.bytes());
            check(&r, 1500)
        };
        let p = VnetHdr::PLAIN;
        assert_eq!(bad(VnetHdr { flags: 0x40, ..p }), Err(Reject::Malformed), "unknown flag");
        assert_eq!(bad(VnetHdr { gso_type: 9, ..p }), Err(Reject::Malformed), "unknown GSO type");
        assert_eq!(bad(VnetHdr { gso_type: GSO_ECN, ..p }), Err(Reject::Malformed), "ECN without GSO");
        assert_eq!(
            bad(VnetHdr { flags: 1, csum_start: 60, csum_offset: 60, ..p }),
            Err(Reject::Malformed),
            "checksum past the end"
        );
        assert_eq!(
            bad(VnetHdr { flags: 1, csum_start: 2, csum_offset: 0, ..p }),
            Err(Reject::Malformed),
            "checksum in the Ethernet header"
        );
        let gso = VnetHdr { flags: 1, gso_type: GSO_TCPV4, hdr_len: 54, gso_size: 0, csum_start: 34, csum_offset: 16 };
        assert_eq!(bad(gso), Err(Reject::Malformed), "a segment without an MSS");
        assert_eq!(
            bad(VnetHdr { gso_size: 1000, flags: 0, ..gso }),
            Err(Reject::Malformed),
            "a segment without a checksum to fill in"
        );
        assert_eq!(
            bad(VnetHdr { gso_size: 1000, hdr_len: 500, ..gso }),
            Err(Reject::Malformed),
            "headers longer than the frame"
        );
        assert!(bad(VnetHdr { gso_size: 1000, ..gso }).is_ok());
        assert_eq!(VnetHdr::parse(&gso.bytes()), Some(gso));
    }

    proptest! {
        /// Any bytes: a verdict, never a panic; and a record that passes has the MACs where they are read.
        #[test]
        fn any_bytes_get_a_verdict(bytes in proptest::collection::vec(any::<u8>(), 0..2000), mtu in 576u16..9000) {
            if check(&bytes, mtu).is_ok() {
                prop_assert!(bytes.len() >= MIN_RECORD);
                let _ = (dst(&bytes), src(&bytes));
            }
        }
    }
}
