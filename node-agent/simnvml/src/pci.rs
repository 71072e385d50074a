//! PCI bus addresses, parsed once so that the forms people write (`0000:18:00.0`,
//! lowercase hex) and the form NVML prints (`00000000:18:00.0`, uppercase) compare equal.
//! Duplicate detection, `nvmlDeviceGetHandleByPciBusId_v2` and `nvmlDeviceGetPciInfo_v3`
//! all go through [`PciAddress`].

use crate::Error;

/// One PCI function's address: `domain:bus:device.function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI segment. At most 0xFFFF: NVML's legacy 16-byte bus id has room for four digits.
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, `[0, 32)`.
    pub device: u8,
    /// Function number, `[0, 8)`.
    pub function: u8,
}

impl PciAddress {
    /// Parses `DDDD:BB:DD.F` or `DDDDDDDD:BB:DD.F` (hex, either case).
    ///
    /// # Errors
    /// [`Error::PciBusId`] naming the first part that is malformed or out of range.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let fail = |reason| Error::PciBusId {
            value: text.to_owned(),
            reason,
        };
        let mut parts = text.split(':');
        let (Some(domain), Some(bus), Some(slot), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("expected three ':'-separated parts"));
        };
        let (device, function) = slot
            .split_once('.')
            .ok_or(fail("expected DEVICE.FUNCTION after the bus"))?;
        if domain.len() != 4 && domain.len() != 8 {
            return Err(fail("domain must have 4 or 8 hex digits"));
        }
        let domain = hex(domain, 8).ok_or(fail("domain is not hex"))?;
        if domain > 0xFFFF {
            return Err(fail("domain above FFFF does not fit NVML's legacy bus id"));
        }
        let bus = hex(bus, 2).ok_or(fail("bus must be 2 hex digits"))?;
        let device = hex(device, 2).ok_or(fail("device must be 2 hex digits"))?;
        let function = hex(function, 1).ok_or(fail("function must be 1 hex digit"))?;
        if device >= 32 || function >= 8 {
            return Err(fail("device must be below 20 (hex) and function below 8"));
        }
        Ok(PciAddress {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }

    /// The form NVML reports in `nvmlPciInfo_t.busId`: `%08X:%02X:%02X.%X`.
    pub fn bus_id(&self) -> String {
        format!(
            "{:08X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }

    /// The form NVML reports in `nvmlPciInfo_t.busIdLegacy`: `%04X:%02X:%02X.%X`.
    pub fn bus_id_legacy(&self) -> String {
        format!(
            "{:04X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// `text` as hex if it has 1 to `digits_max` hex digits; `from_str_radix` alone would also
/// accept a leading `+`.
fn hex(text: &str, digits_max: usize) -> Option<u32> {
    let ok =
        !text.is_empty() && text.len() <= digits_max && text.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| u32::from_str_radix(text, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_widths_and_cases_to_one_canonical_form() {
        let table = [
            ("00000000:18:00.0", "00000000:18:00.0"),
            ("0000:18:00.0", "00000000:18:00.0"),
            ("00000000:9a:00.0", "00000000:9A:00.0"),
            ("0001:DB:1f.7", "00000001:DB:1F.7"),
        ];
        for (i, (text, want)) in table.iter().enumerate() {
            let got = PciAddress::parse(text).map(|a| a.bus_id());
            match got {
                Ok(got) if got == *want => {}
                other => panic!("#{i}: parse({text:?}): want {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn legacy_form_has_four_domain_digits() {
        let address = PciAddress::parse("00000000:2A:00.0").expect("valid");
        assert_eq!(address.bus_id_legacy(), "0000:2A:00.0");
    }

    #[test]
    fn rejects_malformed_addresses() {
        let table = [
            "",
            "18:00.0",
            "00000000:18:00",
            "00000000:18:00.0:1",
            "000:18:00.0",
            "0000000g:18:00.0",
            "00010000:18:00.0",
            "00000000:180:00.0",
            "00000000:18:20.0",
            "00000000:18:00.8",
            "00000000:+1:00.0",
            "00000000:18:00.",
        ];
        for (i, text) in table.iter().enumerate() {
            if let Ok(got) = PciAddress::parse(text) {
                panic!("#{i}: parse({text:?}): want an error, got {got:?}");
            }
        }
    }
}
