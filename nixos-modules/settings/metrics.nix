# [metrics]: the Prometheus endpoint. Its one key, `listen`, is written by the
# module from services.msp-agent.listenAddress and .port (declared here with
# openFirewall), which the firewall follows; setting it in `settings` is
# refused.
{ lib, mkSection, ... }:

mkSection {
  path = [ "metrics" ];
  description = ''
    The Prometheus endpoint (`GET /metrics`). The module writes `listen`
    from {option}`services.msp-agent.listenAddress` and
    {option}`services.msp-agent.port`; do not set it here.
  '';

  derive =
    cfg:
    {
      listen =
        if lib.hasInfix ":" cfg.listenAddress then
          "[${cfg.listenAddress}]:${toString cfg.port}"
        else
          "${cfg.listenAddress}:${toString cfg.port}";
    };

  module =
    { config, lib, ... }:
    let
      inherit (lib) mkOption types;
      cfg = config.services.msp-agent;
      isLoopback = cfg.listenAddress == "::1" || lib.hasPrefix "127." cfg.listenAddress;
      # The agent parses `listen` as a socket address: an IP literal, no host name.
      isIPLiteral =
        a:
        builtins.match "[0-9]{1,3}([.][0-9]{1,3}){3}" a != null
        || (lib.hasInfix ":" a && builtins.match "[0-9a-fA-F:.]+" a != null);
    in
    {
      options.services.msp-agent = {
        listenAddress = mkOption {
          type = types.str;
          default = "127.0.0.1";
          example = "::";
          description = ''
            IP address of the Prometheus metrics endpoint (`GET /metrics`), an
            IPv4 or IPv6 literal: the agent takes no host name here.
          '';
        };

        port = mkOption {
          type = types.port;
          default = 9465;
          description = "Port of the Prometheus metrics endpoint (the agent's own default).";
        };

        openFirewall = mkOption {
          type = types.bool;
          default = false;
          description = "Open {option}`services.msp-agent.port` in the firewall, for a Prometheus on another host.";
        };
      };

      config = lib.mkIf cfg.enable {
        assertions = [
          {
            assertion = !(cfg.settings.metrics ? listen);
            message = "services.msp-agent.settings.metrics.listen is set by the module; use services.msp-agent.listenAddress and .port, which the firewall option follows.";
          }
          {
            assertion = isIPLiteral cfg.listenAddress;
            message = "services.msp-agent.listenAddress = \"${cfg.listenAddress}\" is not an IP address; the agent listens on an IPv4 or IPv6 literal such as \"127.0.0.1\" or \"::\".";
          }
          {
            assertion = !(cfg.openFirewall && isLoopback);
            message = "services.msp-agent.openFirewall = true, but listenAddress = \"${cfg.listenAddress}\" is a loopback address: nothing outside this host could reach it. Set listenAddress (for example \"0.0.0.0\") or leave the firewall closed.";
          }
        ];

        networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];
      };
    };
}
