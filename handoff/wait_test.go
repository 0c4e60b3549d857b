package handoff

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRolloutPending: what the user reads while waiting.
func TestRolloutPending(t *testing.T) {
	two, zero := int32(2), int32(0)
	for _, tc := range []struct {
		d    appsv1.Deployment
		want string
	}{
		{appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Generation: 2}, Spec: appsv1.DeploymentSpec{Replicas: &two},
			Status: appsv1.DeploymentStatus{ObservedGeneration: 1, AvailableReplicas: 2, UpdatedReplicas: 2}}, "has not seen its latest spec"},
		{appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Generation: 1}, Spec: appsv1.DeploymentSpec{Replicas: &two},
			Status: appsv1.DeploymentStatus{ObservedGeneration: 1}}, "0 of 2 replicas available"},
		{appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Generation: 1}, Spec: appsv1.DeploymentSpec{Replicas: &two},
			Status: appsv1.DeploymentStatus{ObservedGeneration: 1, AvailableReplicas: 1}}, "no replica runs the latest spec"},
		{appsv1.Deployment{Spec: appsv1.DeploymentSpec{Replicas: &zero}}, "scaled to 0"},
		{appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Generation: 1}, Spec: appsv1.DeploymentSpec{Replicas: &two},
			Status: appsv1.DeploymentStatus{ObservedGeneration: 1, AvailableReplicas: 1, UpdatedReplicas: 1}}, ""},
	} {
		got := rolloutPending(&tc.d)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("rolloutPending(%+v) = %q, want %q", tc.d.Status, got, tc.want)
		}
	}
}

// TestPodWhy: a pending pod says why (scheduling, image pull, crashes).
func TestPodWhy(t *testing.T) {
	for _, tc := range []struct {
		s    corev1.PodStatus
		want string
	}{
		{corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Message: "0/3 nodes are available: 1 node(s) didn't have free ports for the requested pod ports"}}}, "not scheduled: 0/3 nodes"},
		{corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{State: corev1.ContainerState{
			Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "Back-off pulling image"}}}}}, "ImagePullBackOff Back-off"},
		{corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{RestartCount: 3, LastTerminationState: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: "--kube: configmap rackboot-system/rackboot-rack: not in the cluster"}}}}}, "restarted 3 times, last exit 1: --kube"},
		{corev1.PodStatus{Phase: corev1.PodRunning}, "Running, not ready"},
	} {
		if got := podWhy(corev1.Pod{Status: tc.s}); !strings.Contains(got, tc.want) {
			t.Errorf("podWhy = %q, want %q", got, tc.want)
		}
	}
}
