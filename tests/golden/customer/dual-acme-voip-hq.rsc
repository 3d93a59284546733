# tunnelctl: RouterOS v7 script for the customer side of acme-voip/hq (cloud gateway cloud-1).
# Contains the tunnel's preshared key: do not share it. Paste into the router's terminal
# (or upload and run /import file-name=acme-voip-hq.rsc).
# Safe to run again, e.g. after ops rotate the preshared key: every step finds what an earlier
# run made (by name or by its "tunnelctl" comment) and sets it, and adds only what is missing.
# A failing step stops the script with its number; the steps before it stay done, so fix the
# cause and run the whole script again.
# The cloud always answers at 10.20.0.1, whatever this tunnel's own /30. Its public IP
# (203.0.113.10) is only the endpoint, never an allowed address (that makes the router loop).
# Over IPv6 the cloud answers at fd42:4242:1::1; steps 6 and 7 give this router its IPv6 side.

# 1. The WireGuard interface. RouterOS generates its private key when it is created; the public
#    key registered for this tunnel must match, or the cloud ignores the router.
:do {
  :local found [/interface wireguard find where name="wg-cloud-1"]
  :if ([:len $found] = 0) do={ /interface wireguard add name="wg-cloud-1" mtu=1420 comment="tunnelctl acme-voip/hq" } else={ /interface wireguard set $found mtu=1420 comment="tunnelctl acme-voip/hq" }
} on-error={ :error "tunnelctl step 1 (WireGuard interface) failed" }
:if ([/interface wireguard get [find where name="wg-cloud-1"] public-key] != "lLPX1IURNbXgkXRFHb5cSmCcgcvMle6WvHEPQ57qGn8=") do={ :error "wg-cloud-1: this router's public key is not the one registered for acme-voip/hq; send ops the key shown by /interface wireguard print" }

# 2. The cloud peer (found again by its comment; a re-run sets the current preshared key).
:do {
  :local found [/interface wireguard peers find where interface="wg-cloud-1" and comment="tunnelctl cloud-1"]
  :if ([:len $found] = 0) do={ /interface wireguard peers add interface="wg-cloud-1" comment="tunnelctl cloud-1" public-key="YJZs8LdgZritEgpUMAnyB8xGXYMXCScV/v4DkPmJiyg=" preshared-key="1ROfVrP4ivPR8a0RXMO5qHarGw1b1ySkPyun/Fc/2lI=" endpoint-address="203.0.113.10" endpoint-port=51821 allowed-address=10.20.0.1/32,fd42:4242:1::1/128,fd42:4242:ff00::/64 persistent-keepalive=25s } else={ /interface wireguard peers set $found public-key="YJZs8LdgZritEgpUMAnyB8xGXYMXCScV/v4DkPmJiyg=" preshared-key="1ROfVrP4ivPR8a0RXMO5qHarGw1b1ySkPyun/Fc/2lI=" endpoint-address="203.0.113.10" endpoint-port=51821 allowed-address=10.20.0.1/32,fd42:4242:1::1/128,fd42:4242:ff00::/64 persistent-keepalive=25s }
} on-error={ :error "tunnelctl step 2 (cloud peer) failed" }

# 3. This router's tunnel address.
:do {
  :local found [/ip address find where interface="wg-cloud-1" and comment="tunnelctl acme-voip/hq"]
  :if ([:len $found] = 0) do={ /ip address add interface="wg-cloud-1" comment="tunnelctl acme-voip/hq" address=10.20.0.6/30 } else={ /ip address set $found address=10.20.0.6/30 }
} on-error={ :error "tunnelctl step 3 (tunnel address) failed" }

# 4. Routes into the tunnel: the cloud address lies outside this tunnel's /30, so it needs its own route.
:do {
  :local found [/ip route find where dst-address=10.20.0.1/32 and comment="tunnelctl cloud-1"]
  :if ([:len $found] = 0) do={ /ip route add dst-address=10.20.0.1/32 comment="tunnelctl cloud-1" gateway="wg-cloud-1" } else={ /ip route set $found gateway="wg-cloud-1" }
} on-error={ :error "tunnelctl step 4 (route to 10.20.0.1/32) failed" }

# 5. LANs 192.168.10.0/24 are routed by the cloud: do not masquerade them into the tunnel.

# 6. This router's IPv6 tunnel address (advertise=no: no router advertisements into the tunnel).
:do {
  :local found [/ipv6 address find where interface="wg-cloud-1" and comment="tunnelctl acme-voip/hq"]
  :if ([:len $found] = 0) do={ /ipv6 address add interface="wg-cloud-1" comment="tunnelctl acme-voip/hq" address=fd42:4242:1:5::2/64 advertise=no } else={ /ipv6 address set $found address=fd42:4242:1:5::2/64 advertise=no }
} on-error={ :error "tunnelctl step 6 (IPv6 tunnel address) failed" }

# 7. IPv6 routes into the tunnel: the cloud's fd42:4242:1::1 lies outside this tunnel's own prefix.
:do {
  :local found [/ipv6 route find where dst-address=fd42:4242:1::1/128 and comment="tunnelctl cloud-1"]
  :if ([:len $found] = 0) do={ /ipv6 route add dst-address=fd42:4242:1::1/128 comment="tunnelctl cloud-1" gateway="wg-cloud-1" } else={ /ipv6 route set $found gateway="wg-cloud-1" }
} on-error={ :error "tunnelctl step 7 (IPv6 route to fd42:4242:1::1/128) failed" }
:do {
  :local found [/ipv6 route find where dst-address=fd42:4242:ff00::/64 and comment="tunnelctl cloud-1"]
  :if ([:len $found] = 0) do={ /ipv6 route add dst-address=fd42:4242:ff00::/64 comment="tunnelctl cloud-1" gateway="wg-cloud-1" } else={ /ipv6 route set $found gateway="wg-cloud-1" }
} on-error={ :error "tunnelctl step 7 (IPv6 route to fd42:4242:ff00::/64) failed" }

# IPv6 LANs fd99:10::/64 are routed by the cloud as well: no NAT for them either.
