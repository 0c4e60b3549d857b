// Package bmc powers a rack's servers and sets a one-time network boot
// through their BMCs, over Redfish (github.com/stmcginnis/gofish) or IPMI
// v2.0 / RMCP+ "lanplus" (github.com/bougou/go-ipmi, pure Go: no ipmitool).
//
// # API
//
// Open(ctx, Config) returns a Driver for one BMC: PowerState, PowerOn,
// PowerOff (hard), PowerCycle (soft, then hard, then on), SetNetbootOnce
// (BIOS or UEFI PXE for the next boot, read back) and Close. Config carries
// the address, the protocol (ipmi, redfish or auto), the user and password,
// the Redfish system to use when a BMC has several (Id, UUID or a NIC's
// MAC), TLS verification, timeouts, and the injected logger, clock and
// sleep. Every error is a *Error that names the BMC and protocol
// ("bmc 10.0.0.31 (redfish): power on: ...") and wraps ErrAuth,
// ErrUnreachable, ErrUnsupported, ErrTimeout or ErrOverrideIgnored where
// one applies. The password is never logged, never in an error (an error
// text that echoes it is redacted), and Config's String, GoString and
// LogValue leave it out.
//
// # Choices
//
//   - auto probes GET /redfish/v1/ over https, then http, then sends IPMI's
//     session-less Get Channel Authentication Capabilities; the first that
//     answers is used and Info().Probed says it was probed. A certificate
//     that fails verification stops the probe (no silent fall back to http).
//   - TLS: BMCs ship self-signed certificates, so by default the
//     certificate is accepted without verification, logged as a warning and
//     reported in Info().TLSVerified; VerifyTLS with RootCAs checks it.
//     Plain-http Redfish (emulators) is logged as sending the password in
//     the clear.
//   - Redfish uses HTTP basic authentication, not sessions: no session to
//     leak on BMCs with few session slots (iLO 4), nothing to log out.
//   - One request in flight per BMC: each Driver method holds a mutex for
//     its whole operation, and gofish is limited to one concurrent request.
//     BMCs freeze under bursts of IPMI commands (siderolabs/omni#785,
//     metal3-io/ironic-image#688) or run out of sessions (openbmc#1241).
//   - Every request has a timeout (RequestTimeout). Transient failures
//     (network errors, timeouts, HTTP 429/5xx, IPMI "node busy") are
//     retried with a backoff from 0.5 s doubling to 5 s, Retries times;
//     an IPMI retry opens a new session (the BMC may have dropped an idle
//     one). Power on/off are sent again only after reading the state again,
//     so a machine that already took the command does not get it twice.
//   - A power change is applied some time after the BMC accepts it (sushy's
//     fake driver: 1-11 s; real BMCs more): the state is polled back until
//     it changes, for up to PowerTimeout. PowerCycle sends ACPI soft-off
//     (Redfish GracefulShutdown or PushPowerButton; IPMI chassis control
//     "soft"), waits up to SoftTimeout for the machine to be off, forces it
//     off if not, then powers on; a machine that is off is just powered on.
//   - ResetType is chosen among the values the system lists in
//     ResetType@Redfish.AllowableValues (or its ActionInfo): On, ForceOn,
//     PushPowerButton for on; ForceOff only for a hard off;
//     GracefulShutdown, PushPowerButton for soft-off (chooseResetType).
//
// # The override is always read back
//
// BMCs answer success to a boot override and ignore or alter it: a
// Supermicro that kept only the target and reverted mode and enablement
// (bmc-toolbox/bmclib#459, met through Tinkerbell rufio), iDRAC 9 booting
// from disk despite the override (ironcore-dev/metal-operator#80),
// KubeVirtBMC and sushy-tools reading Once back as Continuous
// (kubevirtbmc/kubevirtbmc#165; sushy-tools' fake driver always reports
// Continuous). SetNetbootOnce therefore reads the override back and returns
// what the BMC holds as a BootOverride (target in Redfish's names for both
// protocols, Once/Continuous/Disabled, BIOS/UEFI) with Differences saying,
// in words, how it differs from what was asked. A target other than Pxe is
// an error wrapping ErrOverrideIgnored. Other differences (Continuous
// instead of Once, another firmware mode, a mode or enablement the BMC does
// not report, a cleared IPMI valid bit) are returned with a nil error and
// logged as a warning: rackboot's netboot server answers BIOS and UEFI
// clients and tells installed machines to boot their disk, so such a
// machine still netboots once; the caller shows Differences to the user.
// BootOverride.Netboots tells whether the read-back promises a network boot.
//
// # Redfish quirks handled
//
//   - The PATCH carries BootSourceOverrideMode, which Dell 13th-generation
//     iDRACs need for a one-time UEFI PXE boot (ansible/ansible#52658,
//     ansible-collections/community.general#5091). HPE iLO rejects a PATCH
//     that writes the mode (ansible-collections/community.general#3509 and
//     #3581; iLO 5: metal3-io/metal3-docs#581): on 400/403/405/501 the PATCH
//     is sent again without it (dropModeAndRetry), and the read-back says
//     which mode the BMC reports.
//   - Some BMCs require If-Match with the resource's ETag on PATCH and
//     answer 428 without it (DMTF/Redfish-Tacklebox#22, ansible/ansible#56150,
//     Lenovo XCC: ansible-collections/community.general#11261): the ETag of
//     the system just read goes in If-Match. Some send an ETag their own
//     check rejects (412, community.general#3268): the PATCH, or the Reset,
//     is sent once more without it.
//   - A system that lists BootSourceOverrideTarget@Redfish.AllowableValues
//     without Pxe gets ErrUnsupported rather than a PATCH that is ignored.
//   - A BMC with several systems needs Config.SystemID; matchSystem accepts
//     the Id, the UUID or the MAC of one of the system's NICs.
//
// # IPMI
//
//   - Sessions offer cipher suites 17 then 3 instead of asking the BMC:
//     OpenIPMI's ipmi_sim never answers Get Channel Cipher Suites, which cost
//     6 s of timeouts per session; iLO 4, iDRAC 8 and ThinkServer BMCs
//     offer 3.
//   - Before the boot flags, parameter 3 bit 3 is set so the BMC does not
//     clear the valid bit when no chassis control follows within 60 s (IPMI
//     v2.0 table 28-14), as Ironic, RackHD (RackHD/on-tasks#493) and xCAT
//     (xcat2/xcat-core#7460) do; "set in progress" brackets the write. Both
//     are optional: a BMC that refuses them (ipmi_sim does) is not an error.
//   - Boot flags (parameter 5): valid, next boot only (persistent bit
//     clear), EFI bit for UEFI, device selector PXE; the read-back is parsed
//     by parseBootFlags (fuzzed). ipmi_sim passes the device to its chassis
//     and answers the read-back with the first byte zeroed (no valid bit,
//     no EFI bit): that is reported as Disabled/bios differences, exactly
//     as ipmitool's "chassis bootparam get 5" shows it.
//   - Close ends the RMCP+ session (ipmi_sim's session count drops).
//
// # Tests
//
// The tests run the real emulators on 127.0.0.1 at free ports: sushy-tools
// (../shared/tools/sushy-tools under Debian's /usr/bin/python3, fake
// driver, basic auth, optionally TLS with a certificate the test makes,
// optionally its external notifier) and ipmi_sim, whose chassis_control
// program is a small script keeping the power and boot device in files.
// ipmitool is the independent client for IPMI, a plain HTTP GET for Redfish.
package bmc
