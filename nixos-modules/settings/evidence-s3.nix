# [evidence.s3]: where bundles go after the local spool, write-once. Only the
# bucket is required; a key left null is left out of the file and the agent's
# default applies (docs/evidence.md).
{
  mkSection,
  mkKey,
  mkOption,
  types,
  ...
}:

mkSection {
  path = [
    "evidence"
    "s3"
  ];
  kind = "optionalTable";
  description = "Where bundles go after the local spool; null keeps them local.";
  keys = {
    bucket = mkOption {
      type = types.str;
      description = "Bucket with Object Lock enabled; the agent checks this at start.";
    };
    prefix = mkKey {
      type = types.str;
      example = "clinic-01";
      agentDefault = "the bucket's root";
      description = "Key prefix of this host's bundles, without leading or trailing slash";
    };
    endpoint = mkKey {
      type = types.str;
      example = "http://minio.internal:9000";
      description = "Endpoint URL of a server other than AWS.";
    };
    region = mkKey {
      type = types.str;
      example = "eu-central-1";
      agentDefault = "us-east-1";
      description = "Region of the bucket";
    };
    path_style = mkKey {
      type = types.bool;
      agentDefault = "false";
      description = "Path-style addressing, as MinIO and Ceph usually need";
    };
    retention_days = mkKey {
      type = types.ints.positive;
      agentDefault = "2190, six years";
      description = "COMPLIANCE retention of each bundle, in days";
    };
    credentials_file = mkKey {
      type = types.str;
      description = ''
        Leave unset and use
        {option}`services.msp-agent.evidence.s3.credentialsFile`, which
        hands the file over as the credential `s3-credentials`.
      '';
    };
  };
}
