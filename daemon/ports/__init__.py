"""The outside, one module each: the only places bytes the daemon does not own come in (IMDS, AWS
and the S3 mirror, mail and apprise, NVML, systemd notify, the shutdown commands). Each returns
plain values or "unknown", never a library's exception, an unbounded read or a huge body."""
