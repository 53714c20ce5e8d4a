package testutil

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"
)

// fillBase is the first time Fill uses; each time field is a number of
// minutes after it.
var fillBase = time.Date(2031, 2, 3, 4, 5, 6, 7000, time.UTC)

var (
	timeType     = reflect.TypeFor[time.Time]()
	durationType = reflect.TypeFor[time.Duration]()
)

// Fill sets every field of the struct ptr points to, recursively through
// nested structs, to a non-zero value that no other field of the same kind
// has: a string names its field ("Hardware.Kernel-3"), a number, duration
// or time is the field's position in the walk, a bool is true, a map gets
// one entry and a slice two elements, filled the same way. Fill is
// deterministic, so two calls give equal values. A field of a kind it
// cannot fill fails the test, so that a conversion test notices a new kind
// of field instead of passing it over.
func Fill(t testing.TB, ptr any) {
	t.Helper()
	v := reflect.ValueOf(ptr)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		t.Fatalf("testutil.Fill: %T is not a pointer to a struct", ptr)
	}
	n := 0
	if err := fill(v.Elem(), "", &n); err != nil {
		t.Fatalf("testutil.Fill(%T): %v", ptr, err)
	}
}

func fill(v reflect.Value, path string, n *int) error {
	*n++
	switch {
	case v.Type() == timeType:
		v.Set(reflect.ValueOf(fillBase.Add(time.Duration(*n) * time.Minute)))
		return nil
	case v.Type() == durationType:
		v.SetInt(int64(time.Duration(*n) * time.Second))
		return nil
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				return fmt.Errorf("%s: unexported field", join(path, f.Name))
			}
			if err := fill(v.Field(i), join(path, f.Name), n); err != nil {
				return err
			}
		}
	case reflect.String:
		v.SetString(fmt.Sprintf("%s-%d", path, *n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(*n))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(*n))
	case reflect.Map:
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		if err := fill(k, path+"[key]", n); err != nil {
			return err
		}
		if err := fill(e, path+"[value]", n); err != nil {
			return err
		}
		v.Set(reflect.MakeMap(v.Type()))
		v.SetMapIndex(k, e)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			if err := fill(s.Index(i), fmt.Sprintf("%s[%d]", path, i), n); err != nil {
				return err
			}
		}
		v.Set(s)
	default:
		return fmt.Errorf("%s: cannot fill a %s", path, v.Type())
	}
	return nil
}

// Leaves returns the leaf fields of the struct v (or *v) by dotted path
// ("Hardware.Kernel"): every field that is not itself a struct, a
// time.Time counting as a leaf. From a pointer the values are settable.
func Leaves(v any) map[string]reflect.Value {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		rv = rv.Elem()
	}
	out := map[string]reflect.Value{}
	leaves(rv, "", out)
	return out
}

func leaves(v reflect.Value, path string, out map[string]reflect.Value) {
	if v.Kind() != reflect.Struct || v.Type() == timeType {
		out[path] = v
		return
	}
	for i := range v.NumField() {
		leaves(v.Field(i), join(path, v.Type().Field(i).Name), out)
	}
}

// ZeroFields returns, sorted, the paths of the leaf fields of v (see
// Leaves) that hold their zero value; an empty map or slice counts as
// zero.
func ZeroFields(v any) []string {
	var out []string
	for path, f := range Leaves(v) {
		if f.IsZero() || (f.Kind() == reflect.Map || f.Kind() == reflect.Slice) && f.Len() == 0 {
			out = append(out, path)
		}
	}
	slices.Sort(out)
	return out
}

// DiffFields returns, sorted, the paths of the leaf fields in which a and
// b (values of one struct type) differ, each with both values.
func DiffFields(a, b any) []string {
	la, lb := Leaves(a), Leaves(b)
	var out []string
	for path, fa := range la {
		fb := lb[path]
		if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			out = append(out, fmt.Sprintf("%s: %#v != %#v", path, fa.Interface(), fb.Interface()))
		}
	}
	slices.Sort(out)
	return out
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}
