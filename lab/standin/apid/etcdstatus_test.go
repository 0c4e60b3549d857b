package apid_test

import (
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"

	"github.com/dotfile/rackboot/lab/standin/apid"
)

// EtcdStatus on a stand-in control plane: its own member (by hostname) is
// the member and the leader, readers may ask (Talos's rule); once its
// member is removed there is no status.
func TestEtcdStatus(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	_, addr, _ := configured(t, p, func(c *apid.Config) { c.Hostname = "lailah" })
	reader := withConfig(t, withRole(t, p, "os:reader"), addr)
	admin := withConfig(t, p.admin, addr)
	resp, err := reader.EtcdStatus(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	st := resp.GetMessages()[0].GetMemberStatus()
	if st.GetMemberId() != 0x2222 || st.GetLeader() != 0x2222 || st.GetIsLearner() || len(st.GetErrors()) != 0 {
		t.Errorf("etcd status %v, want member and leader 0x2222", st)
	}
	for _, id := range []uint64{0x1111, 0x2222} {
		if err := admin.EtcdRemoveMemberByID(ctx(t), &machine.EtcdRemoveMemberByIDRequest{MemberId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.EtcdStatus(ctx(t)); err == nil {
		t.Error("etcd status with no member answered")
	}
}
