# [evidence]: the signed evidence bundles and their local spool. The signing
# key and the S3 credentials are options of the module
# (services.msp-agent.evidence.*, declared here), handed to the agent as
# systemd credentials and never named in the file; the agent looks for the
# credentials `signing-key` and `s3-credentials` in $CREDENTIALS_DIRECTORY when
# key_file and s3.credentials_file are unset. [evidence.s3] is ./evidence-s3.nix.
{
  mkSection,
  mkKey,
  mkOption,
  types,
  ...
}:

mkSection {
  path = [ "evidence" ];
  description = "The signed evidence bundles and their local spool (docs/evidence.md).";
  keys = {
    key_file = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        Leave unset and use
        {option}`services.msp-agent.evidence.signingKeyFile`, which
        hands the key over as the credential `signing-key`.
      '';
    };
    spool_max_bytes = mkKey {
      type = types.ints.positive;
      example = 536870912;
      agentDefault = "1 GiB";
      description = "Upper bound of the local evidence spool, in bytes";
    };
    spool_alarm_percent = mkKey {
      type = types.ints.between 0 100;
      agentDefault = "80";
      description = "Share of `spool_max_bytes`, in percent, past which the agent raises an alarm (error log, counter, status)";
    };
    keep_uploaded_bytes = mkKey {
      type = types.ints.unsigned;
      agentDefault = "64 MiB";
      description = "Bytes of bundles already in S3 kept in the local spool, oldest pruned first";
    };
  };

  module =
    { config, lib, ... }:
    let
      inherit (lib) mkOption optional types;
      cfg = config.services.msp-agent;
      s3 = cfg.settings.evidence.s3;

      # A file that must stay out of the world-readable store: an absolute path
      # as a string (a path literal such as ./key would be copied into the store).
      secretFile = types.nullOr (
        types.pathWith {
          inStore = false;
          absolute = true;
        }
      );
    in
    {
      options.services.msp-agent.evidence = {
        signingKeyFile = mkOption {
          type = secretFile;
          default = null;
          example = "/run/keys/msp-agent-signing-key";
          description = ''
            Ed25519 signing key (OpenSSH private key format), read by systemd and
            handed to the agent as the credential `signing-key`. Null: the agent
            generates a key in its state directory on first start
            (`msp-agent pubkey` prints the public half).
          '';
        };
        s3.credentialsFile = mkOption {
          type = secretFile;
          default = null;
          example = "/run/keys/msp-agent-s3";
          description = ''
            AWS-style credentials file (`aws_access_key_id`,
            `aws_secret_access_key`) for the evidence bucket, handed to the agent
            as the credential `s3-credentials`.
          '';
        };
      };

      config = lib.mkIf cfg.enable {
        assertions = [
          {
            assertion = cfg.settings.evidence.key_file == null || cfg.evidence.signingKeyFile == null;
            message = "services.msp-agent: both settings.evidence.key_file and evidence.signingKeyFile are set; keep evidence.signingKeyFile, which hands the key over as a systemd credential.";
          }
          {
            assertion = s3 == null || (s3.credentials_file or null) == null || cfg.evidence.s3.credentialsFile == null;
            message = "services.msp-agent: both settings.evidence.s3.credentials_file and evidence.s3.credentialsFile are set; keep evidence.s3.credentialsFile, which hands the file over as a systemd credential.";
          }
          {
            assertion = cfg.evidence.s3.credentialsFile == null || s3 != null;
            message = "services.msp-agent.evidence.s3.credentialsFile is set but settings.evidence.s3 (the bucket) is not; set the bucket or drop the credentials.";
          }
        ];

        warnings = optional (
          s3 != null && cfg.evidence.s3.credentialsFile == null && (s3.credentials_file or null) == null
        ) "services.msp-agent: settings.evidence.s3 is set without evidence.s3.credentialsFile; the agent falls back to the AWS default credential chain (instance role).";

        systemd.services.msp-agent.serviceConfig.LoadCredential =
          optional (cfg.evidence.signingKeyFile != null) "signing-key:${cfg.evidence.signingKeyFile}"
          ++ optional (cfg.evidence.s3.credentialsFile != null) "s3-credentials:${cfg.evidence.s3.credentialsFile}";
      };
    };
}
