//! The parameters of an EC2 Query request, with the list and filter
//! conventions (`ImageId.1`, `Filter.1.Name`, `Filter.1.Value.1`).

use std::collections::BTreeMap;

use super::error::Ec2Error;

/// Decoded request parameters.
#[derive(Debug, Clone, Default)]
pub struct Params {
    map: BTreeMap<String, String>,
}

pub use crate::core::describe::Filter;

impl Params {
    /// From decoded pairs; a repeated name keeps its first value.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            map.entry(k).or_insert(v);
        }
        Self { map }
    }

    /// Every parameter, in name order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// The value of `name`, which must be there and not empty.
    pub fn required(&self, name: &str) -> Result<&str, Ec2Error> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Ec2Error::missing(name))
    }

    /// A boolean (`true`/`false`, any case); absent is `false`.
    pub fn flag(&self, name: &str) -> Result<bool, Ec2Error> {
        match self.get(name) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(Ec2Error::invalid_value(name, v, "Expected a boolean.")),
        }
    }

    /// An integer within `range`, if given.
    pub fn int(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, Ec2Error> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .map(Some)
                .ok_or_else(|| {
                    Ec2Error::invalid_value(
                        name,
                        v,
                        &format!(
                            "Expected an integer from {} to {}.",
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    }

    /// `prefix.1`, `prefix.2`, ... in numeric order.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut items: Vec<(u64, String)> = self
            .map
            .iter()
            .filter_map(|(k, v)| {
                let n = k.strip_prefix(prefix)?.strip_prefix('.')?;
                n.parse::<u64>().ok().map(|n| (n, v.clone()))
            })
            .collect();
        items.sort();
        items.into_iter().map(|(_, v)| v).collect()
    }

    /// `BlockDeviceMapping.N.*` (DeviceName, VirtualName, NoDevice,
    /// Ebs.SnapshotId, Ebs.VolumeSize, Ebs.DeleteOnTermination (default
    /// true), Ebs.VolumeType), in numeric order.
    pub fn block_devices(&self) -> Result<Vec<crate::images::BlockDevice>, Ec2Error> {
        let mut numbers: Vec<u64> = self
            .map
            .keys()
            .filter_map(|k| {
                let rest = k.strip_prefix("BlockDeviceMapping.")?;
                rest.split('.').next()?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        let mut out = Vec::with_capacity(numbers.len());
        for n in numbers {
            let at = |field: &str| format!("BlockDeviceMapping.{n}.{field}");
            let device_name = self.required(&at("DeviceName"))?.to_string();
            let ebs_given = self
                .map
                .keys()
                .any(|k| k.starts_with(&format!("BlockDeviceMapping.{n}.Ebs.")));
            let ebs = if ebs_given {
                let size = self.int(&at("Ebs.VolumeSize"), 1..=16384)?;
                Some(crate::images::EbsDevice {
                    snapshot_id: self
                        .get(&at("Ebs.SnapshotId"))
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    volume_size: size.map(|s| s as u64),
                    delete_on_termination: self.get(&at("Ebs.DeleteOnTermination")).is_none()
                        || self.flag(&at("Ebs.DeleteOnTermination"))?,
                    volume_type: self.get(&at("Ebs.VolumeType")).map(str::to_string),
                })
            } else {
                None
            };
            out.push(crate::images::BlockDevice {
                device_name,
                ebs,
                virtual_name: self.get(&at("VirtualName")).map(str::to_string),
                // Any value (EC2 sends an empty one) drops the mapping.
                no_device: self.get(&at("NoDevice")).is_some(),
            });
        }
        Ok(out)
    }

    /// `Filter.N.Name` with `Filter.N.Value.M`.
    pub fn filters(&self) -> Result<Vec<Filter>, Ec2Error> {
        let mut numbers: Vec<u64> = self
            .map
            .keys()
            .filter_map(|k| {
                let rest = k.strip_prefix("Filter.")?;
                rest.split('.').next()?.parse().ok()
            })
            .collect();
        numbers.sort();
        numbers.dedup();
        numbers
            .into_iter()
            .map(|n| {
                let name = self
                    .get(&format!("Filter.{n}.Name"))
                    .ok_or_else(|| Ec2Error::missing(&format!("Filter.{n}.Name")))?;
                Ok(Filter {
                    name: name.to_string(),
                    values: self.list(&format!("Filter.{n}.Value")),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn lists_and_filters_follow_the_query_conventions() {
        let p = params(&[
            ("ImageId.2", "ami-2"),
            ("ImageId.10", "ami-10"),
            ("ImageId.1", "ami-1"),
            ("Filter.1.Name", "name"),
            ("Filter.1.Value.2", "b*"),
            ("Filter.1.Value.1", "a"),
            ("Filter.2.Name", "state"),
            ("DryRun", "TRUE"),
        ]);
        assert_eq!(p.list("ImageId"), ["ami-1", "ami-2", "ami-10"]);
        let f = p.filters().expect("filters");
        assert_eq!(f[0].name, "name");
        assert_eq!(f[0].values, ["a", "b*"]);
        assert_eq!(f[1].values, Vec::<String>::new());
        assert_eq!(p.flag("DryRun"), Ok(true));
        assert_eq!(p.flag("Nope"), Ok(false));
        assert_eq!(
            params(&[("DryRun", "yes")])
                .flag("DryRun")
                .map_err(|e| e.code),
            Err("InvalidParameterValue".to_string())
        );
        assert_eq!(
            p.required("Action").map_err(|e| e.code),
            Err("MissingParameter".to_string())
        );
        let bad = params(&[("Filter.1.Value.1", "x")]);
        assert!(bad.filters().is_err());
    }
}
